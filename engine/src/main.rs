fn main() {
    eprintln!("recorder: not built yet");
    std::process::exit(2);
}
