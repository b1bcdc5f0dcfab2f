//! docs/options.md is generated from the knob table; the committed file must match.

#[test]
fn docs_options_md_is_up_to_date() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/options.md");
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = engine::config::options_markdown();
    assert!(
        committed == generated,
        "docs/options.md is out of date with the knob table: regenerate it with \
         `cargo run -p engine -- options --markdown > docs/options.md`"
    );
}

#[test]
fn every_ring_knob_is_documented_with_its_kernel_constant() {
    let md = engine::config::options_markdown();
    for k in engine::config::all_knobs()
        .into_iter()
        .filter(|k| k.section == "ring")
    {
        assert!(md.contains(&format!("`{}`", k.name)), "{} missing", k.name);
        assert!(
            !k.kernel.is_empty() && !k.since.is_empty(),
            "{} lacks kernel constant or since",
            k.name
        );
    }
}
