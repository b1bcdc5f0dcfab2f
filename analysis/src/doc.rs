//! A small document model rendered both as Markdown (charts linked as PNG) and as one
//! self-contained HTML file (charts inlined as SVG).

use std::fmt::Write as _;

use crate::charts::ChartFiles;

#[derive(Clone, Debug)]
pub enum Block {
    Heading(u8, String),
    Para(String),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    Chart(ChartFiles),
    Pre(String),
}

#[derive(Clone, Debug, Default)]
pub struct Doc {
    pub title: String,
    pub blocks: Vec<Block>,
}

impl Doc {
    pub fn new(title: impl Into<String>) -> Self {
        Doc {
            title: title.into(),
            blocks: Vec::new(),
        }
    }
    pub fn h(&mut self, level: u8, t: impl Into<String>) {
        self.blocks.push(Block::Heading(level, t.into()));
    }
    pub fn p(&mut self, t: impl Into<String>) {
        self.blocks.push(Block::Para(t.into()));
    }
    pub fn table(&mut self, head: &[&str], rows: Vec<Vec<String>>) {
        self.blocks.push(Block::Table {
            head: head.iter().map(|s| s.to_string()).collect(),
            rows,
        });
    }
    pub fn chart(&mut self, c: ChartFiles) {
        self.blocks.push(Block::Chart(c));
    }
    pub fn pre(&mut self, t: impl Into<String>) {
        self.blocks.push(Block::Pre(t.into()));
    }

    pub fn to_markdown(&self) -> String {
        let mut o = format!("# {}\n\n", self.title);
        for b in &self.blocks {
            match b {
                Block::Heading(l, t) => {
                    let _ = write!(o, "{} {t}\n\n", "#".repeat(*l as usize + 1));
                }
                Block::Para(t) => {
                    let _ = write!(o, "{t}\n\n");
                }
                Block::Table { head, rows } => {
                    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
                    let _ = writeln!(
                        o,
                        "| {} |",
                        head.iter().map(|h| cell(h)).collect::<Vec<_>>().join(" | ")
                    );
                    let _ = writeln!(o, "|{}", "---|".repeat(head.len()));
                    for r in rows {
                        let _ = writeln!(
                            o,
                            "| {} |",
                            r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
                        );
                    }
                    o.push('\n');
                }
                Block::Chart(c) => {
                    let png = c
                        .png
                        .file_name()
                        .map(|f| f.to_string_lossy().to_string())
                        .unwrap_or_default();
                    let svg = c
                        .svg
                        .file_name()
                        .map(|f| f.to_string_lossy().to_string())
                        .unwrap_or_default();
                    let _ = write!(o, "![{}]({png})\n\n([SVG]({svg}))\n\n", c.title);
                }
                Block::Pre(t) => {
                    let _ = write!(o, "```\n{}\n```\n\n", t.trim_end());
                }
            }
        }
        o
    }

    pub fn to_html(&self) -> String {
        let mut o = String::from(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
        );
        let _ = writeln!(o, "<title>{}</title>", esc(&self.title));
        o.push_str(
            "<style>body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}\
             .tw{overflow-x:auto;max-width:100%}table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top;overflow-wrap:anywhere;max-width:40em}\
             th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}pre{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px;white-space:pre-wrap;overflow-wrap:anywhere}p{overflow-wrap:anywhere}\
             .chart{margin:1em 0;overflow-x:auto}.chart svg{max-width:100%;height:auto}code{background:#f2f2f2;padding:0 3px}</style>\n</head><body>\n",
        );
        let _ = writeln!(o, "<h1>{}</h1>", esc(&self.title));
        for b in &self.blocks {
            match b {
                Block::Heading(l, t) => {
                    let _ = writeln!(o, "<h{0}>{1}</h{0}>", l + 1, inline(t));
                }
                Block::Para(t) => {
                    let _ = writeln!(o, "<p>{}</p>", inline(t));
                }
                Block::Table { head, rows } => {
                    o.push_str("<div class=\"tw\"><table><thead><tr>");
                    for h in head {
                        let _ = write!(o, "<th>{}</th>", inline(h));
                    }
                    o.push_str("</tr></thead><tbody>\n");
                    for r in rows {
                        o.push_str("<tr>");
                        for c in r {
                            let _ = write!(o, "<td>{}</td>", inline(c));
                        }
                        o.push_str("</tr>\n");
                    }
                    o.push_str("</tbody></table></div>\n");
                }
                Block::Chart(c) => {
                    let svg = c
                        .svg_text
                        .find("<svg")
                        .map(|i| &c.svg_text[i..])
                        .unwrap_or(&c.svg_text);
                    let _ = writeln!(
                        o,
                        "<div class=\"chart\" title=\"{}\">{svg}</div>",
                        esc(&c.title)
                    );
                }
                Block::Pre(t) => {
                    let _ = writeln!(o, "<pre>{}</pre>", esc(t));
                }
            }
        }
        o.push_str("</body></html>\n");
        o
    }
}

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Escapes and turns `code` spans and **bold** into HTML.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in esc(s).split('`').enumerate() {
        if i % 2 == 1 {
            let _ = write!(out, "<code>{part}</code>");
        } else {
            for (j, q) in part.split("**").enumerate() {
                if j % 2 == 1 {
                    let _ = write!(out, "<b>{q}</b>");
                } else {
                    out.push_str(q);
                }
            }
        }
    }
    out
}
