//! Printing plans as text, JSON (the contract) and Markdown (for reviews).

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};
use vsa_core::plan::{Action, Change, Plan};

const ADD: Style = AnsiColor::Green.on_default();
const CHANGE: Style = AnsiColor::Yellow.on_default();
const DEL: Style = AnsiColor::Red.on_default();
const DIM: Style = Style::new().dimmed();
const BOLD: Style = Style::new().bold();

fn action_style(a: Action) -> (Style, char) {
    match a {
        Action::Create => (ADD, '+'),
        Action::Update => (CHANGE, '~'),
        Action::Delete => (DEL, '-'),
    }
}

fn short(commit: &Option<String>) -> String {
    match commit {
        Some(c) => c.chars().take(12).collect(),
        None => "working copy (not a git checkout)".to_owned(),
    }
}

/// A terminal rendering of a plan. ANSI styles are always written; the
/// caller's stream (anstream) strips them when colour is off.
pub fn plan_text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{BOLD}Plan for host {}{BOLD:#} {DIM}(desired state at {}){DIM:#}",
        plan.host,
        short(&plan.commit)
    );
    if plan.in_sync() {
        let _ = writeln!(out, "{ADD}In sync:{ADD:#} nothing to change.");
    }
    if let Some(why) = &plan.reload {
        let _ = writeln!(
            out,
            "  {CHANGE}~ reload nginx{CHANGE:#} {DIM}({why}){DIM:#}"
        );
    }
    let width = plan
        .changes
        .iter()
        .map(|c| c.kind.as_str().len())
        .max()
        .unwrap_or(5);
    for c in &plan.changes {
        let (style, sign) = action_style(c.action);
        let _ = writeln!(
            out,
            "  {style}{sign} {:<6} {:<width$} {}{style:#} {DIM}({}){DIM:#}",
            c.action.as_str(),
            c.kind.as_str(),
            c.name,
            c.reason,
        );
        // Updates are what a reviewer must read; creates are whole files
        // (see `vsactl render`), deletes are whole files going away.
        if c.action == Action::Update
            && let Some(d) = &c.diff
        {
            out.push_str(&indent_diff(d, true));
        }
    }
    for c in &plan.conflicts {
        let _ = writeln!(
            out,
            "  {DEL}! blocked {} {}{DEL:#}: {}",
            c.kind.as_str(),
            c.name,
            c.message
        );
    }
    for u in &plan.unmanaged {
        let _ = writeln!(
            out,
            "  {DIM}? unmanaged {} file {} (not vsa's: left alone){DIM:#}",
            u.kind.as_str(),
            u.file
        );
    }
    let s = plan.summary;
    let _ = writeln!(
        out,
        "\n{} to create, {} to update, {} to delete{}.",
        s.create,
        s.update,
        s.delete,
        if plan.conflicts.is_empty() {
            String::new()
        } else {
            format!(", {} blocked", plan.conflicts.len())
        }
    );
    out
}

fn indent_diff(diff: &str, color: bool) -> String {
    let mut out = String::new();
    for line in diff.lines() {
        let style = if !color || line.starts_with("+++") || line.starts_with("---") {
            DIM
        } else if line.starts_with('+') {
            ADD
        } else if line.starts_with('-') {
            DEL
        } else if line.starts_with("@@") {
            AnsiColor::Cyan.on_default()
        } else {
            Style::new()
        };
        let _ = writeln!(out, "      {style}{line}{style:#}");
    }
    out
}

fn emoji(a: Action) -> &'static str {
    match a {
        Action::Create => "🟢 create",
        Action::Update => "🟡 update",
        Action::Delete => "🔴 delete",
    }
}

/// One Markdown section for a host, made for a pull-request comment.
pub fn plan_markdown(plan: &Plan) -> String {
    let mut out = String::new();
    let s = plan.summary;
    let _ = writeln!(
        out,
        "### Host `{}`: {} to create, {} to update, {} to delete\n",
        plan.host, s.create, s.update, s.delete
    );
    if let Some(why) = &plan.reload {
        let _ = writeln!(out, "> **nginx must be reloaded**: {why}\n");
    }
    if plan.in_sync() {
        out.push_str("No changes: the host is in sync with this desired state.\n\n");
        return out;
    }
    if !plan.changes.is_empty() {
        out.push_str("| action | kind | name | reason |\n|---|---|---|---|\n");
        for c in &plan.changes {
            let _ = writeln!(
                out,
                "| {} | {} | `{}` | {} |",
                emoji(c.action),
                c.kind.as_str(),
                c.name,
                c.reason
            );
        }
        out.push('\n');
    }
    for c in &plan.conflicts {
        let _ = writeln!(
            out,
            "> **Blocked** {} `{}`: {}\n",
            c.kind.as_str(),
            c.name,
            c.message
        );
    }
    for c in plan.changes.iter().filter(|c| c.diff.is_some()) {
        details(&mut out, c);
    }
    out
}

fn details(out: &mut String, c: &Change) {
    let Some(diff) = &c.diff else { return };
    // A fence longer than any backtick run in the diff keeps it intact.
    let longest = diff.split(|ch| ch != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    let _ = writeln!(
        out,
        "<details><summary>{} {} <code>{}</code></summary>\n\n{fence}diff\n{}{fence}\n\n</details>\n",
        c.action.as_str(),
        c.kind.as_str(),
        c.name,
        diff
    );
}
