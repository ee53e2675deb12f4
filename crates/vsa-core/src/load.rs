//! Parsing manifest files (already read into memory) into typed documents.
//!
//! The loader never stops at the first problem: each document of each file is
//! parsed on its own, so one broken document costs only itself, and every
//! problem comes back with `file:line:col`. Hostile YAML (alias bombs, deep
//! nesting, huge files) is refused by explicit budgets before it can hang or
//! exhaust memory.

use std::borrow::Cow;

use serde::de::DeserializeOwned;

use crate::manifest::{API_VERSION, FleetSpec, Header, Kind, Located, SiteSpec, StackSpec};
use crate::problem::Problem;
use crate::span::Pos;
use crate::unknown_fields::UnknownFields;

/// Manifests larger than this are refused unread: a site is a few hundred bytes.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// A manifest file's path (relative to the repository, for messages) and text.
#[derive(Clone, Debug)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

/// Every document found, sorted by kind. Not yet validated.
#[derive(Clone, Debug, Default)]
pub struct Documents {
    pub fleets: Vec<Located<FleetSpec>>,
    pub sites: Vec<Located<SiteSpec>>,
    pub stacks: Vec<Located<StackSpec>>,
}

/// Parses every document of every file; returns what parsed and every problem.
pub fn parse_files(files: &[SourceFile]) -> (Documents, Vec<Problem>) {
    parse_files_parallel(files, 1)
}

/// [`parse_files`] on up to `threads` threads; the result is the same, in
/// the same order.
pub fn parse_files_parallel(files: &[SourceFile], threads: usize) -> (Documents, Vec<Problem>) {
    let threads = threads.clamp(1, 64);
    if threads == 1 || files.len() < 64 {
        let mut docs = Documents::default();
        let mut problems = Vec::new();
        for file in files {
            parse_file(file, &mut docs, &mut problems);
        }
        return (docs, problems);
    }
    let per = files.len().div_ceil(threads);
    let parts: Vec<(Documents, Vec<Problem>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per)
            .map(|part| scope.spawn(move || parse_files_parallel(part, 1)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let mut docs = Documents::default();
    let mut problems = Vec::new();
    for (d, p) in parts {
        docs.fleets.extend(d.fleets);
        docs.sites.extend(d.sites);
        docs.stacks.extend(d.stacks);
        problems.extend(p);
    }
    (docs, problems)
}

fn parse_file(file: &SourceFile, docs: &mut Documents, problems: &mut Vec<Problem>) {
    if file.text.len() > MAX_FILE_BYTES {
        problems.push(Problem::error(
            &file.path,
            Pos::new(1, 1),
            format!(
                "file is {} bytes, more than the {} a manifest may have",
                file.text.len(),
                MAX_FILE_BYTES
            ),
        ));
        return;
    }
    let chunks = split_documents(&file.text);
    if chunks.len() > MAX_DOCUMENTS_PER_FILE {
        problems.push(Problem::error(
            &file.path,
            Pos::new(1, 1),
            format!(
                "file has {} documents, more than the {MAX_DOCUMENTS_PER_FILE} a manifest may have",
                chunks.len()
            ),
        ));
        return;
    }
    for chunk in chunks {
        parse_document(&file.path, chunk, docs, problems);
    }
}

const MAX_DOCUMENTS_PER_FILE: usize = 10_000;

/// One document's text and the line it starts on (0-based offset).
#[derive(Debug, PartialEq, Eq)]
struct Chunk<'a> {
    text: &'a str,
    line_offset: u32,
}

/// Splits a YAML stream at document markers.
///
/// YAML forbids `---` and `...` followed by a blank at the start of a line
/// anywhere but as document markers (not even inside block or quoted
/// scalars), so splitting by lines is exact. Each chunk keeps its leading
/// `---` line so that `--- {inline: doc}` still parses, and line numbers stay
/// right by adding the chunk's offset.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let mut start = 0usize;
    let mut start_line = 0u32;
    let mut line_no = 0u32;
    let mut offset = 0usize;
    let mut seen_content = false;
    for line in text.split_inclusive('\n') {
        let is_start = is_marker(line, "---");
        let is_end = is_marker(line, "...");
        if is_start && seen_content {
            chunks.push(Chunk {
                text: &text[start..offset],
                line_offset: start_line,
            });
            start = offset;
            start_line = line_no;
            seen_content = false;
        }
        if is_start {
            // `--- value` carries content on the marker line itself.
            seen_content |= !line[3..].trim().is_empty() && !line[3..].trim().starts_with('#');
        } else if !is_end && !is_blank_or_comment(line) && !line.starts_with('%') {
            seen_content = true;
        }
        offset += line.len();
        line_no += 1;
        if is_end && seen_content {
            chunks.push(Chunk {
                text: &text[start..offset],
                line_offset: start_line,
            });
            start = offset;
            start_line = line_no;
            seen_content = false;
        }
    }
    if seen_content {
        chunks.push(Chunk {
            text: &text[start..],
            line_offset: start_line,
        });
    }
    chunks
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.starts_with(marker)
        && line[marker.len()..]
            .chars()
            .next()
            .is_none_or(|c| c == ' ' || c == '\t' || c == '\n' || c == '\r')
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim();
    t.is_empty() || t.starts_with('#')
}

fn options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_events: 200_000,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_depth: 32,
            max_nodes: 100_000,
            max_documents: 1,
            max_total_scalar_bytes: MAX_FILE_BYTES,
            max_recorded_anchor_events: 10_000,
            max_recorded_anchor_bytes: 1 << 20,
        },
        strict_booleans: true,
        with_snippet: false,
    }
}

/// The common case, without a second YAML parse: `apiVersion: vsa/v1`
/// and `kind: <Kind>` as plain top-level lines. Anything else (flow style,
/// quotes, a wrong value) takes the careful path, which names the problem.
fn fast_header(chunk: &Chunk<'_>) -> Option<(Kind, Pos)> {
    let mut kind = None;
    let mut api_ok = false;
    for (i, line) in chunk.text.lines().enumerate() {
        let value = |rest: &str| -> String {
            let v = rest.split(" #").next().unwrap_or("").trim();
            v.to_owned()
        };
        if let Some(rest) = line.strip_prefix("kind:") {
            if kind.is_some() {
                return None; // a duplicate key: let the parser say so
            }
            kind = Some((
                Kind::parse(&value(rest))?,
                Pos::new(chunk.line_offset + i as u32 + 1, 1),
            ));
        } else if let Some(rest) = line.strip_prefix("apiVersion:") {
            if api_ok || value(rest) != API_VERSION {
                return None;
            }
            api_ok = true;
        }
    }
    if api_ok { kind } else { None }
}

fn parse_document(path: &str, chunk: Chunk<'_>, docs: &mut Documents, problems: &mut Vec<Problem>) {
    if let Some((k, pos)) = fast_header(&chunk) {
        match k {
            Kind::Fleet => push(path, &chunk, pos, &mut docs.fleets, problems),
            Kind::Site => push(path, &chunk, pos, &mut docs.sites, problems),
            Kind::Stack => push(path, &chunk, pos, &mut docs.stacks, problems),
        }
        return;
    }
    let header: Header = match serde_saphyr::from_str_with_options(chunk.text, options()) {
        Ok(Some(h)) => h,
        Ok(None) => return, // an empty document
        Err(e) => {
            problems.push(yaml_problem(path, &chunk, &e));
            return;
        }
    };
    let doc_pos = header
        .kind
        .as_ref()
        .or(header.api_version.as_ref())
        .map(|s| shift(s.pos, &chunk))
        .unwrap_or(Pos::new(chunk.line_offset + 1, 1));
    let Some(kind) = header.kind.as_ref() else {
        problems.push(Problem::error(
            path,
            doc_pos,
            "missing field `kind` (one of Fleet, Site, Stack)",
        ));
        return;
    };
    let Some(k) = Kind::parse(&kind.value) else {
        problems.push(Problem::error(
            path,
            shift(kind.pos, &chunk),
            format!(
                "unknown kind `{}`, expected one of Fleet, Site, Stack",
                kind.value
            ),
        ));
        return;
    };
    match &header.api_version {
        None => {
            problems.push(Problem::error(
                path,
                doc_pos,
                format!("missing field `apiVersion` (expected `{API_VERSION}`)"),
            ));
            return;
        }
        Some(v) if v.value != API_VERSION => {
            problems.push(Problem::error(
                path,
                shift(v.pos, &chunk),
                format!(
                    "unsupported apiVersion `{}`, expected `{API_VERSION}`",
                    v.value
                ),
            ));
            return;
        }
        Some(_) => {}
    }
    match k {
        Kind::Fleet => push(path, &chunk, doc_pos, &mut docs.fleets, problems),
        Kind::Site => push(path, &chunk, doc_pos, &mut docs.sites, problems),
        Kind::Stack => push(path, &chunk, doc_pos, &mut docs.stacks, problems),
    }
}

fn push<T: DeserializeOwned + Shift>(
    path: &str,
    chunk: &Chunk<'_>,
    pos: Pos,
    out: &mut Vec<Located<T>>,
    problems: &mut Vec<Problem>,
) {
    // serde stops at the first unknown field; to report every problem, the
    // parse records unknown fields, skips their values and goes on.
    let unknown = UnknownFields::new(MAX_UNKNOWN_FIELDS);
    let parsed =
        serde_saphyr::with_deserializer_from_str_with_options(chunk.text, options(), |de| {
            T::deserialize(unknown.wrap(de))
        });
    let unknown = unknown.into_errors();
    for e in &unknown {
        problems.push(yaml_problem(path, chunk, e));
    }
    match parsed {
        // With unknown fields the document is unusable, but validating the
        // rest of it still finds its other problems.
        Ok(mut spec) => {
            spec.shift(chunk.line_offset);
            out.push(Located {
                file: path.to_owned(),
                pos,
                spec,
            });
        }
        Err(e) => problems.push(yaml_problem(path, chunk, &e)),
    }
}

/// Unknown fields reported per document; the parse stops at the last one.
const MAX_UNKNOWN_FIELDS: usize = 20;

fn shift(pos: Pos, chunk: &Chunk<'_>) -> Pos {
    if pos == Pos::UNKNOWN {
        return pos;
    }
    Pos::new(pos.line + chunk.line_offset, pos.col)
}

fn yaml_problem(path: &str, chunk: &Chunk<'_>, e: &serde_saphyr::Error) -> Problem {
    let pos = e
        .location()
        .map(|l| shift(l.into(), chunk))
        .unwrap_or(Pos::new(chunk.line_offset + 1, 1));
    Problem::error(path, pos, clean_message(&yaml_message(e)))
}

/// The words of a serde-saphyr error, for a [`Problem`] that carries its
/// position on its own. Every path that turns such an error into a problem
/// goes through here.
pub(crate) fn yaml_message(e: &serde_saphyr::Error) -> String {
    e.render_with_options(serde_saphyr::render_options! {
        formatter: &Words,
        snippets: serde_saphyr::SnippetMode::Off,
    })
}

/// Renders serde-saphyr's errors without positions (an error inside an
/// alias replay even counts them from the anchor, not the file) and words
/// the ones that would otherwise print internal names or Debug output.
struct Words;

impl serde_saphyr::Localizer for Words {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _: serde_saphyr::Location) -> Cow<'a, str> {
        base
    }

    fn alias_defined_at(&self, _: serde_saphyr::Location) -> String {
        String::new()
    }

    fn alias_used_at(&self, _: serde_saphyr::Location) -> String {
        String::new()
    }
}

impl serde_saphyr::MessageFormatter for Words {
    fn localizer(&self) -> &dyn serde_saphyr::Localizer {
        self
    }

    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> Cow<'a, str> {
        use serde_saphyr::Error;
        match err {
            Error::Budget { breach, .. } => Cow::Owned(format!(
                "the document is over the parser's budget for {}",
                budget_subject(breach)
            )),
            Error::DuplicateMappingKey { key: Some(k), .. } => {
                Cow::Owned(format!("duplicate key `{k}`"))
            }
            Error::DuplicateMappingKey { key: None, .. } => Cow::Borrowed("duplicate key"),
            _ => serde_saphyr::DefaultMessageFormatter.format_message(err),
        }
    }
}

/// What a budget limits, in the words of someone writing YAML.
fn budget_subject(breach: &serde_saphyr::budget::BudgetBreach) -> &'static str {
    use serde_saphyr::budget::BudgetBreach as B;
    match breach {
        B::Events { .. } => "parser events (the document is too large)",
        B::Aliases { .. } => "aliases (`*name`)",
        B::Anchors { .. } => "anchors (`&name`)",
        B::Depth { .. } => "nesting depth",
        B::InclusionDepth { .. } => "include depth",
        B::Documents { .. } => "documents",
        B::Nodes { .. } => "values (the document is too large)",
        B::ScalarBytes { .. } => "text (the document's values are too long)",
        B::MergeKeys { .. } => "merge keys (`<<`)",
        B::AliasAnchorRatio { .. } => "aliases per anchor",
        B::SequenceUnbalanced => "structure (a sequence or mapping is not closed)",
        B::InputBytes { .. } => "input bytes (the document is too large)",
        B::RecordedAnchorEvents { .. } | B::RecordedAnchorBytes { .. } => {
            "anchored values repeated through aliases"
        }
        B::PropertyExpansionDepth { .. } | B::PropertyInterpolationWork { .. } => {
            "property expansion"
        }
        _ => "its size or complexity",
    }
}

/// Our own wording on top of [`yaml_message`], for manifest documents.
fn clean_message(msg: &str) -> String {
    let m = msg.trim_end();
    if m.starts_with("expected mapping") || m == "invalid type" {
        return format!("{m} (a manifest document must be a mapping of fields)");
    }
    m.to_owned()
}

/// Parsed positions are relative to their document; this makes them
/// relative to the file.
pub(crate) trait Shift {
    fn shift(&mut self, lines: u32);
}

mod shift_impls {
    use super::Shift;
    use crate::manifest::*;
    use crate::span::{Pos, Sp};

    fn s(pos: &mut Pos, lines: u32) {
        if *pos != Pos::UNKNOWN {
            pos.line += lines;
        }
    }

    impl<T: Shift> Shift for Sp<T> {
        fn shift(&mut self, lines: u32) {
            s(&mut self.pos, lines);
            self.value.shift(lines);
        }
    }
    impl<T: Shift> Shift for Option<T> {
        fn shift(&mut self, lines: u32) {
            if let Some(v) = self {
                v.shift(lines);
            }
        }
    }
    impl<T: Shift> Shift for Vec<T> {
        fn shift(&mut self, lines: u32) {
            for v in self {
                v.shift(lines);
            }
        }
    }
    macro_rules! leaf {
        ($($t:ty),*) => { $(impl Shift for $t { fn shift(&mut self, _: u32) {} })* };
    }
    leaf!(String, i64, bool, RateLimit);

    impl Shift for FleetSpec {
        fn shift(&mut self, l: u32) {
            self.api_version.shift(l);
            self.kind.shift(l);
            if let Some(a) = &mut self.acme {
                a.email.shift(l);
            }
            for h in &mut self.hosts {
                h.id.shift(l);
                h.address.shift(l);
            }
            if let Some(d) = &mut self.defaults {
                d.rate_limit.shift(l);
                d.max_body.shift(l);
            }
        }
    }
    impl Shift for SiteSpec {
        fn shift(&mut self, l: u32) {
            self.api_version.shift(l);
            self.kind.shift(l);
            self.domain.shift(l);
            self.host.shift(l);
            self.aliases.shift(l);
            self.upstream.shift(l);
            self.tls.shift(l);
            self.auth.shift(l);
            self.rate_limit.shift(l);
            self.max_body.shift(l);
            self.websockets.shift(l);
            self.csp.shift(l);
        }
    }
    impl Shift for UpstreamSpec {
        fn shift(&mut self, l: u32) {
            self.container.shift(l);
            self.port.shift(l);
            self.url.shift(l);
        }
    }
    impl Shift for AuthSpec {
        fn shift(&mut self, l: u32) {
            self.realm.shift(l);
            self.users.shift(l);
        }
    }
    impl Shift for AuthUser {
        fn shift(&mut self, l: u32) {
            self.name.shift(l);
            self.bcrypt.shift(l);
        }
    }
    impl Shift for StackSpec {
        fn shift(&mut self, l: u32) {
            self.api_version.shift(l);
            self.kind.shift(l);
            self.name.shift(l);
            self.host.shift(l);
            for svc in self.services.values_mut() {
                svc.shift(l);
            }
        }
    }
    impl Shift for ServiceSpec {
        fn shift(&mut self, l: u32) {
            self.image.shift(l);
            self.volumes.shift(l);
            self.ports.shift(l);
            self.restart.shift(l);
            self.depends_on.shift(l);
            self.networks.shift(l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_keeping_line_offsets() {
        let text = "# c\napiVersion: a\n---\nkind: b\n--- {x: 1}\n...\n---\n# only comment\n";
        let chunks = split_documents(text);
        assert_eq!(
            chunks,
            vec![
                Chunk {
                    text: "# c\napiVersion: a\n",
                    line_offset: 0
                },
                Chunk {
                    text: "---\nkind: b\n",
                    line_offset: 2
                },
                Chunk {
                    text: "--- {x: 1}\n...\n",
                    line_offset: 4
                },
            ]
        );
    }

    #[test]
    fn a_marker_needs_a_blank_after_it() {
        let chunks = split_documents("a: |\n  ---x\n----\n");
        assert_eq!(chunks.len(), 1);
    }
}
