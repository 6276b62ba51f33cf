//! The web view's HTML, compiled into the binary with maud: every interpolated value is
//! escaped, so text from pull requests (titles, branches, authors) and from the query
//! string is shown as text, never read as markup. Pages work without JavaScript; the one
//! script (`static/app.js`) only refreshes them live. Links are relative, so the view
//! works under any path prefix (`kubectl proxy`, an Ingress path).

use jiff::Timestamp;
use maud::{DOCTYPE, Markup, html};

use super::model::{
    EnvironmentDetail, EnvironmentSummary, ListQuery, ListView, PHASE_FILTERS, SORTS,
};

/// From an environment's page (`environments/NAMESPACE/NAME`) back to the root.
pub const DETAIL_BASE: &str = "../../";

/// `3h 12m`, `2d 4h`, `45s`.
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.unsigned_abs();
    let (d, h, m) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h {m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

fn absolute(t: Timestamp) -> String {
    t.strftime("%Y-%m-%d %H:%M UTC").to_string()
}

/// A `<time>` element: relative text, the absolute time as its title.
fn time_relative(t: Option<Timestamp>, now: Timestamp) -> Markup {
    match t {
        None => html! { span.muted { "—" } },
        Some(t) => {
            let secs = t.duration_since(now).as_secs();
            let text = if secs >= 0 {
                format!("in {}", human_duration(secs))
            } else {
                format!("{} ago", human_duration(secs))
            };
            html! { time datetime=(t.to_string()) title=(absolute(t)) { (text) } }
        }
    }
}

fn phase_class(phase: &str) -> &'static str {
    match phase {
        "Ready" => "ok",
        "Complete" => "done",
        "Testing" => "testing",
        "Failed" => "bad",
        "Provisioning" => "busy",
        "Terminating" | "Terminated" => "warn",
        _ => "idle",
    }
}

fn phase_badge(s: &EnvironmentSummary) -> Markup {
    html! {
        span class=(format!("badge {}", phase_class(&s.phase))) { (s.phase) }
        @if s.deleting { " " span.badge.warn { "deleting" } }
        @if let Some(reason) = s.reason.as_ref().filter(|r| !s.asleep && r.as_str() != s.phase) {
            br; span.reason { (reason) }
        }
    }
}

fn sleep_badge(s: &EnvironmentSummary) -> Markup {
    html! {
        @if s.asleep {
            span.badge.asleep { "Asleep" }
            @if let Some(reason) = &s.sleep_reason { br; span.reason { (reason) } }
        } @else {
            span.badge.awake { "Awake" }
        }
    }
}

fn cost_cell(s: &EnvironmentSummary) -> Markup {
    let spent = s.cost_to_date.unwrap_or_default();
    html! {
        span.money { (spent) }
        @if let Some(total) = s.budget_total {
            " of " span.money { (total) }
            @let max = total.micros().max(1);
            br;
            meter min="0" max=(max) low=(max * 8 / 10) high=(max) optimum="0" value=(spent.micros().min(max))
                aria-label=(format!("{spent} of a {total} budget")) {}
        } @else if let Some(daily) = s.budget_daily {
            br; span.reason { (daily) " a day at most" }
        }
    }
}

fn tests_cell(s: &EnvironmentSummary) -> Markup {
    html! {
        @match &s.tests {
            None => span.muted { "—" },
            Some(t) if t.state.as_deref() == Some("Running") => span.badge.busy { "running" },
            Some(t) => {
                span.passed { (t.passed) " passed" }
                @if t.failed > 0 { ", " span.failed { (t.failed) " failed" } }
            }
        }
    }
}

/// The page shell: header, skip link, main content, the live-update script.
fn layout(title: &str, base: &str, signed_in: Option<&str>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                meta name="referrer" content="no-referrer";
                title { (title) " · previewd" }
                link rel="stylesheet" href=(format!("{base}static/app.css"));
                script src=(format!("{base}static/app.js")) defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href=(if base.is_empty() { "./".to_string() } else { base.to_string() }) {
                        span.logo aria-hidden="true" { "◆" } " previewd"
                    }
                    span.tagline { "Preview environments" }
                    @if let Some(user) = signed_in {
                        form.logout method="post" action=(format!("{base}logout")) {
                            span.user { "Signed in as " strong { (user) } }
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" { (main) }
                footer { "Read-only view of previewd's caches. " a href=(format!("{base}api/v1/environments")) { "JSON API" } }
            }
        }
    }
}

fn sort_link(query: &ListQuery, key: &str, label: &str) -> Markup {
    let active = query.sort_key() == key;
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (name, value) in [
        ("repo", &query.repo),
        ("phase", &query.phase),
        ("author", &query.author),
    ] {
        if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
            q.append_pair(name, v);
        }
    }
    q.append_pair("sort", key);
    html! {
        a href=(format!("?{}", q.finish())) aria-current=[active.then_some("true")] { (label) }
    }
}

fn select(name: &str, label: &str, options: &[(String, String)], current: Option<&str>) -> Markup {
    let current = current.unwrap_or_default();
    html! {
        label {
            span { (label) }
            select name=(name) {
                option value="" { "Any" }
                @for (value, text) in options {
                    option value=(value) selected[value.eq_ignore_ascii_case(current)] { (text) }
                }
                // A value from the query string that is not among the options is kept,
                // shown (escaped) as it was given.
                @if !current.is_empty() && !options.iter().any(|(v, _)| v.eq_ignore_ascii_case(current)) {
                    option value=(current) selected { (current) }
                }
            }
        }
    }
}

/// The list of every environment the user may see.
pub fn list_page(view: &ListView, query: &ListQuery, user: Option<&str>, live: &str) -> Markup {
    let now = view.generated_at;
    let pairs = |v: &[String]| -> Vec<(String, String)> {
        v.iter().map(|x| (x.clone(), x.clone())).collect()
    };
    let phases: Vec<(String, String)> = PHASE_FILTERS
        .iter()
        .map(|p| ((*p).to_string(), (*p).to_string()))
        .collect();
    let sorts: Vec<(String, String)> = SORTS
        .iter()
        .map(|(k, l)| ((*k).to_string(), (*l).to_string()))
        .collect();
    let main = html! {
        h1 { "Preview environments" }
        ul.stats aria-label="Summary" {
            li { span.num { (view.visible) } " visible" }
            li { span.num { (view.serving) } " serving" }
            li { span.num { (view.failed) } " failed" }
            li { span.num { (view.asleep) } " asleep" }
        }
        form.filters method="get" action="" role="search" aria-label="Filter environments" {
            (select("repo", "Repository", &pairs(&view.repositories), query.repo.as_deref()))
            (select("phase", "Phase", &phases, query.phase.as_deref()))
            (select("author", "Author", &pairs(&view.authors), query.author.as_deref()))
            label {
                span { "Sort by" }
                select name="sort" {
                    @for (value, text) in &sorts {
                        option value=(value) selected[query.sort_key() == value] { (text) }
                    }
                }
            }
            div.actions {
                button type="submit" { "Apply" }
                a href="./" { "Reset" }
            }
        }
        section #results data-live=(live) aria-labelledby="results-caption" {
            p #live-status.live role="status" aria-live="polite" {}
            @if view.items.is_empty() {
                p.empty #results-caption {
                    @if view.visible == 0 { "No environments yet." } @else { "No environment matches these filters." }
                }
            } @else {
                div.scroll {
                    table.envs {
                        caption #results-caption {
                            (view.items.len()) " of " (view.visible) " environments"
                        }
                        thead { tr {
                            th scope="col" { "Pull request" }
                            th scope="col" { "Phase" }
                            th scope="col" { "State" }
                            th scope="col" { "URL" }
                            th scope="col" aria-sort=[(query.sort_key() == "age").then_some("descending")] { (sort_link(query, "age", "Age")) }
                            th scope="col" aria-sort=[(query.sort_key() == "expiry").then_some("ascending")] { (sort_link(query, "expiry", "Expires")) }
                            th scope="col" aria-sort=[(query.sort_key() == "cost").then_some("descending")] { (sort_link(query, "cost", "Cost to date")) }
                            th scope="col" { "Tests" }
                        } }
                        tbody {
                            @for s in &view.items {
                                tr data-environment=(format!("{}/{}", s.namespace, s.name)) {
                                    td.pr {
                                        a.title href=(format!("environments/{}/{}", enc(&s.namespace), enc(&s.name))) {
                                            (s.repository) " #" (s.pr_number)
                                            @if let Some(title) = &s.title { span.prtitle { (title) } }
                                        }
                                        span.meta {
                                            @if let Some(author) = &s.author { "by " (author) " · " }
                                            code { (s.branch) } " · "
                                            a href=(s.pr_url) rel="noopener noreferrer" { "on GitHub" span.sr-only { " (pull request " (s.pr_number) ")" } }
                                        }
                                    }
                                    td { (phase_badge(s)) }
                                    td { (sleep_badge(s)) }
                                    td.url {
                                        @if let Some(url) = &s.url { a href=(url) rel="noopener noreferrer" { (url.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/')) } }
                                        @else { span.muted { "—" } }
                                    }
                                    td { time datetime=[s.created_at.map(|t| t.to_string())] title=[s.created_at.map(absolute)] { (human_duration(s.age_seconds)) } }
                                    td { (time_relative(s.expires_at, now)) }
                                    td { (cost_cell(s)) }
                                    td { (tests_cell(s)) }
                                }
                            }
                        }
                    }
                }
            }
            noscript { p.muted { "Reload the page to see changes." } }
        }
    };
    layout("Preview environments", "", user, main)
}

fn enc(segment: &str) -> String {
    form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}

fn dl_row(term: &str, value: Markup) -> Markup {
    html! { div { dt { (term) } dd { (value) } } }
}

/// One environment's page.
pub fn detail_page(
    d: &EnvironmentDetail,
    now: Timestamp,
    user: Option<&str>,
    live: &str,
) -> Markup {
    let s = &d.summary;
    let base = DETAIL_BASE;
    let heading = format!("{} #{}", s.repository, s.pr_number);
    let main = html! {
        nav aria-label="Breadcrumb" { a href=(base) { "All environments" } " / " span aria-current="page" { (heading) } }
        h1 {
            (heading)
            @if let Some(title) = &s.title { span.prtitle { (title) } }
        }
        section #results.detail data-live=(live) aria-label="Environment" {
            p #live-status.live role="status" aria-live="polite" {}
            div.cards {
                section.card aria-labelledby="summary-h" {
                    h2 #summary-h { "Summary" }
                    dl {
                        (dl_row("Phase", phase_badge(s)))
                        (dl_row("State", sleep_badge(s)))
                        (dl_row("Message", html! { (s.message.clone().unwrap_or_default()) }))
                        (dl_row("URL", html! { @if let Some(url) = &s.url { a href=(url) rel="noopener noreferrer" { (url) } } @else { span.muted { "—" } } }))
                        (dl_row("Pull request", html! { a href=(s.pr_url) rel="noopener noreferrer" { (s.repository) " #" (s.pr_number) } @if let Some(a) = &s.author { " by " (a) } }))
                        (dl_row("Branch", html! { code { (s.branch) } @if let Some(b) = &d.base_branch { " → " code { (b) } } }))
                        (dl_row("Commit", html! { code { (d.head_sha.get(..12).unwrap_or(&d.head_sha)) } @if d.deployed_sha.as_deref().is_some_and(|x| x != d.head_sha) { " (deployed: " code { (d.deployed_sha.as_deref().unwrap_or_default().get(..12).unwrap_or_default()) } ")" } }))
                        (dl_row("Environment", html! { code { (s.namespace) "/" (s.name) } @if let Some(ns) = &d.preview_namespace { " in " code { (ns) } } }))
                        (dl_row("Age", html! { (human_duration(s.age_seconds)) }))
                    }
                }
                section.card aria-labelledby="services-h" {
                    h2 #services-h { "Services" }
                    @if d.services.is_empty() { p.muted { "No service deployed yet." } } @else {
                        table {
                            thead { tr { th scope="col" { "Service" } th scope="col" { "Ready" } th scope="col" { "Restarts" } th scope="col" { "Problem" } } }
                            tbody { @for svc in &d.services { tr {
                                th scope="row" {
                                    @if let Some(url) = &svc.url { a href=(url) rel="noopener noreferrer" { (svc.name) } } @else { (svc.name) }
                                    @if !svc.selected { " " span.badge.idle { "not selected" } }
                                }
                                td {
                                    @if svc.available { span.badge.ok { "Ready" } } @else { span.badge.busy { "Not ready" } }
                                    " " (svc.ready) "/" (svc.desired.map(|d| d.to_string()).unwrap_or_else(|| "—".into()))
                                }
                                td { (svc.restarts) }
                                td { @if let Some(p) = &svc.problem { span.failed { (p) } } @else { span.muted { "—" } } }
                            } } }
                        }
                    }
                }
                section.card aria-labelledby="tests-h" {
                    h2 #tests-h { "Tests" }
                    @match &d.tests_detail {
                        None => p.muted { "No test run for this commit." },
                        Some(t) => {
                            p {
                                @if let Some(state) = &t.counts.state { span class=(format!("badge {}", match state.as_str() { "Passed" => "ok", "Failed" => "bad", _ => "busy" })) { (state) } " " }
                                (t.counts.passed) " passed, " (t.counts.failed) " failed, " (t.counts.skipped) " skipped of " (t.counts.total)
                                @if let Some(ms) = t.duration_ms { " in " (human_duration(ms / 1000)) }
                            }
                            @if let Some(e) = &t.error { p.failed { (e) } }
                            @if !t.failures.is_empty() {
                                h3 { "Failed tests" }
                                ul.failures { @for f in &t.failures { li {
                                    code.testname { (f.name) }
                                    @if !f.message.is_empty() { pre.message { (f.message) } }
                                } } }
                            }
                            @if let Some(n) = t.omitted_failures.filter(|n| *n > 0) { p.muted { (n) " more failed tests were left out of the runner's summary." } }
                        }
                    }
                }
                section.card aria-labelledby="cost-h" {
                    h2 #cost-h { "Cost" }
                    dl {
                        (dl_row("To date", html! { (d.cost.to_date.unwrap_or_default()) @if let Some(total) = d.cost.budget_total { " of " (total) } }))
                        (dl_row("Per hour", html! { (d.cost.hourly.unwrap_or_default()) }))
                        (dl_row("Per day", html! { (d.cost.daily.unwrap_or_default()) @if let Some(daily) = d.cost.budget_daily { " (limit " (daily) ")" } }))
                        (dl_row("Per month", html! { (d.cost.monthly.unwrap_or_default()) }))
                        @if let Some(b) = &d.cost.breakdown {
                            (dl_row("Per hour by category", html! { ul.inline { @for (k, v) in b { li { (k) ": " (v) } } } }))
                        }
                        @if let Some(p) = &d.cost.budget_policy { (dl_row("Over budget", html! { (p) })) }
                    }
                }
                section.card aria-labelledby="selection-h" {
                    h2 #selection-h { "What was deployed and tested" }
                    dl {
                        (dl_row("Services", html! { (d.selection.service_policy) ": " (d.selection.service_reason) }))
                        @if let Some(ai) = &d.selection.advice {
                            @if !ai.services_detected.is_empty() { (dl_row("Detected as affected", html! { (ai.services_detected.join(", ")) @if let Some(c) = &ai.confidence { " (confidence " (c) ")" } })) }
                            @if let Some(src) = &ai.source { (dl_row("Decided by", html! { (src) @if let Some(r) = &ai.reason { ": " (r) } })) }
                        }
                        @if let Some(t) = &d.selection.tests {
                            (dl_row("Tests", html! {
                                (t.strategy) " (" (t.source) ")"
                                @if let Some(r) = &t.reason { ": " (r) }
                                @if t.run_all { " — every test runs" } @else if let Some(n) = t.count { " — " (n) " selected" }
                            }))
                            @if !t.tests.is_empty() {
                                (dl_row("Selected tests", html! { ul.inline { @for id in &t.tests { li { code { (id) } } } } }))
                            }
                        }
                    }
                }
                section.card aria-labelledby="expiry-h" {
                    h2 #expiry-h { "Expiry" }
                    dl {
                        (dl_row("Expires", time_relative(d.expiry.expires_at, now)))
                        (dl_row("Time to live", html! { (d.expiry.ttl) @if d.expiry.auto_extend { " from the last activity" } @else { " from creation" } }))
                        (dl_row("Hard cap", time_relative(d.expiry.hard_cap_at, now)))
                        @if let Some(until) = d.expiry.extended_until { (dl_row("Extended until", time_relative(Some(until), now))) }
                        @if let Some(at) = d.expiry.idle_sleep_at { (dl_row("Sleeps if idle", time_relative(Some(at), now))) }
                    }
                    h3 { "What extends it" }
                    ul { @for line in &d.expiry.extended_by { li { (line) } } }
                }
                section.card.wide aria-labelledby="conditions-h" {
                    h2 #conditions-h { "Conditions" }
                    table {
                        thead { tr { th scope="col" { "Type" } th scope="col" { "Status" } th scope="col" { "Reason" } th scope="col" { "Message" } th scope="col" { "Since" } } }
                        tbody { @for c in &d.conditions { tr {
                            th scope="row" { (c.type_) }
                            td { span class=(format!("badge {}", if c.status == "True" { "ok" } else { "idle" })) { (c.status) } }
                            td { (c.reason) }
                            td.message { (c.message) }
                            td { (time_relative(Some(c.last_transition_time), now)) }
                        } } }
                    }
                }
                section.card.wide aria-labelledby="events-h" {
                    h2 #events-h { "Recent events" }
                    @if d.events.is_empty() { p.muted { "No recent events." } } @else {
                        table {
                            thead { tr { th scope="col" { "When" } th scope="col" { "Type" } th scope="col" { "Reason" } th scope="col" { "Message" } } }
                            tbody { @for e in &d.events { tr {
                                td { (time_relative(e.time, now)) @if e.count > 1 { " (×" (e.count) ")" } }
                                td { @if e.type_ == "Warning" { span.badge.bad { "Warning" } } @else { span.badge.idle { (e.type_) } } }
                                td { (e.reason) }
                                td.message { (e.note) }
                            } } }
                        }
                    }
                }
            }
            noscript { p.muted { "Reload the page to see changes." } }
        }
    };
    let title = match &s.title {
        Some(t) => format!("{heading}: {t}"),
        None => heading.clone(),
    };
    layout(&title, base, user, main)
}

/// The sign-in page: paste a token.
pub fn login_page(base: &str, error: Option<&str>, audience: Option<&str>) -> Markup {
    let command = match audience {
        Some(a) => format!("kubectl create token NAME --namespace NAMESPACE --audience {a}"),
        None => "kubectl create token NAME --namespace NAMESPACE".to_string(),
    };
    let main = html! {
        h1 { "Sign in" }
        section.card.narrow {
            p { "Preview environments are shown to those allowed to list them in Kubernetes. Paste a token of yours:" }
            pre { code { (command) } }
            @if let Some(e) = error { p.failed role="alert" { (e) } }
            form method="post" action=(format!("{base}login")) {
                label for="token" { "Token" }
                textarea #token name="token" rows="5" required autocomplete="off" spellcheck="false" {}
                button type="submit" { "Sign in" }
            }
            p.muted { "The token is kept in a cookie only this site can read, for at most 8 hours." }
        }
    };
    layout("Sign in", base, None, main)
}

/// A page that says why nothing is shown.
pub fn message_page(base: &str, title: &str, text: &str, user: Option<&str>) -> Markup {
    let main = html! {
        h1 { (title) }
        section.card.narrow { p { (text) } p { a href=(if base.is_empty() { "./" } else { base }) { "All environments" } } }
    };
    layout(title, base, user, main)
}

/// The stylesheet.
pub const APP_CSS: &str = include_str!("static/app.css");
/// The live-update script.
pub const APP_JS: &str = include_str!("static/app.js");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3900), "1h 5m");
        assert_eq!(human_duration(7200), "2h");
        assert_eq!(human_duration(-90_000), "1d 1h");
    }
}
