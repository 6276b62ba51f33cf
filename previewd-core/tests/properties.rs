//! Property tests of the domain core: the phase machine, durations and expiry, money
//! and cost, quantities and naming.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use previewd_core::cost::{format_cpu, format_memory};
use previewd_core::naming::is_dns1123_subdomain;
use previewd_core::phase::transition_all;
use previewd_core::{
    CostEstimate, ExpiryPolicy, Money, Observation, Phase, Pricing, ResourceRequests, Ttl,
    environment_name, ingress_host, is_dns1123_label, namespace_name, parse_cpu, parse_memory,
    transition,
};
use proptest::prelude::*;
use regex::Regex;

// ---------------------------------------------------------------------------------
// Phase machine
// ---------------------------------------------------------------------------------

fn observation() -> impl Strategy<Value = Observation> {
    prop_oneof![
        Just(Observation::NamespaceReady),
        Just(Observation::ServicesProgressing),
        Just(Observation::ServicesAvailable),
        ".{0,20}".prop_map(|reason| Observation::ServiceFailed { reason }),
        Just(Observation::ReadinessDeadlineExceeded),
        Just(Observation::TestsStarted),
        Just(Observation::TestsPassed),
        any::<u32>().prop_map(|failed| Observation::TestsFailed { failed }),
        Just(Observation::SpecChanged),
        Just(Observation::Expired),
        Just(Observation::DeletionRequested),
        Just(Observation::CleanupFinished),
        Just(Observation::ChecksPending),
        "[a-z]{1,10}".prop_map(|check| Observation::ChecksFailed { check }),
        Just(Observation::RetryRequested),
    ]
}

fn phase() -> impl Strategy<Value = Phase> {
    proptest::sample::select(Phase::ALL.to_vec())
}

/// Applies observations like the controller does: an error keeps the phase.
fn run(start: Phase, observations: &[Observation]) -> Vec<Phase> {
    let mut phases = vec![start];
    let mut current = start;
    for obs in observations {
        if let Ok(t) = transition(current, obs) {
            current = t.next;
        }
        phases.push(current);
    }
    phases
}

proptest! {
    #[test]
    fn nothing_leaves_terminated(observations in prop::collection::vec(observation(), 0..64)) {
        for p in run(Phase::Terminated, &observations) {
            prop_assert_eq!(p, Phase::Terminated);
        }
    }

    #[test]
    fn once_terminated_always_terminated(
        start in phase(),
        observations in prop::collection::vec(observation(), 0..64),
    ) {
        let phases = run(start, &observations);
        if let Some(first) = phases.iter().position(|p| *p == Phase::Terminated) {
            prop_assert!(phases[first..].iter().all(|p| *p == Phase::Terminated));
        }
        for p in &phases {
            prop_assert!(Phase::ALL.contains(p));
            // A valid phase survives a serde round trip.
            let json = serde_json::to_string(p).unwrap();
            prop_assert_eq!(serde_json::from_str::<Phase>(&json).unwrap(), *p);
        }
    }

    #[test]
    fn deletion_then_cleanup_always_terminates(
        start in phase(),
        observations in prop::collection::vec(observation(), 0..64),
    ) {
        let reached = *run(start, &observations).last().unwrap();
        let end = transition_all(
            reached,
            &[Observation::DeletionRequested, Observation::CleanupFinished],
        )
        .unwrap();
        prop_assert_eq!(end, Phase::Terminated);
    }

    #[test]
    fn terminating_only_moves_to_terminated(obs in observation()) {
        let t = transition(Phase::Terminating, &obs).unwrap();
        prop_assert!(matches!(t.next, Phase::Terminating | Phase::Terminated));
        prop_assert_eq!(t.reason, obs.reason());
    }

    #[test]
    fn errors_name_phase_and_observation(start in phase(), obs in observation()) {
        if let Err(e) = transition(start, &obs) {
            prop_assert_eq!(e.phase, start);
            prop_assert_eq!(e.observation, obs.reason());
            let message = e.to_string();
            prop_assert!(message.contains(start.as_str()) && message.contains(obs.reason()));
        }
    }
}

#[test]
fn every_phase_is_reachable_from_pending() {
    let all = [
        Observation::NamespaceReady,
        Observation::ServicesProgressing,
        Observation::ServicesAvailable,
        Observation::ServiceFailed { reason: "x".into() },
        Observation::ReadinessDeadlineExceeded,
        Observation::TestsStarted,
        Observation::TestsPassed,
        Observation::TestsFailed { failed: 1 },
        Observation::SpecChanged,
        Observation::Expired,
        Observation::DeletionRequested,
        Observation::CleanupFinished,
        Observation::ChecksPending,
        Observation::ChecksFailed {
            check: "build".into(),
        },
        Observation::RetryRequested,
    ];
    let mut seen = BTreeSet::from([Phase::Pending]);
    let mut frontier = vec![Phase::Pending];
    while let Some(p) = frontier.pop() {
        for obs in &all {
            if let Ok(t) = transition(p, obs)
                && seen.insert(t.next)
            {
                frontier.push(t.next);
            }
        }
    }
    assert_eq!(seen, BTreeSet::from(Phase::ALL));
}

// ---------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------

fn ttl_regex() -> Regex {
    Regex::new(Ttl::PATTERN).unwrap()
}

/// The schema (pattern and length) and the parser agree, except for totals above
/// `Ttl::MAX`.
fn assert_pattern_agrees(re: &Regex, input: &str) {
    let parsed = input.parse::<Ttl>();
    let matched = input.len() <= Ttl::MAX_LENGTH && re.is_match(input);
    match parsed {
        Ok(_) => assert!(matched, "{input:?} parses but the pattern refuses it"),
        Err(previewd_core::TtlError::TooLong { .. }) => {
            assert!(
                matched,
                "{input:?} is too long but should match the pattern"
            )
        }
        Err(e) => assert!(!matched, "{input:?} matches the pattern but fails: {e}"),
    }
}

#[test]
fn ttl_pattern_matches_exactly_what_parses() {
    let re = ttl_regex();
    let good = [
        "30m",
        "4h",
        "7d",
        "1w",
        "1h30m",
        "1s",
        "90m",
        "1d12h",
        "520w",
        "2w3d4h5m6s",
        "10h",
        "100s",
        "30m1h",
    ];
    let bad = [
        "",
        "0",
        "0h",
        "-1h",
        "abc",
        "4x",
        "4",
        "h",
        "01h",
        "1h0m",
        "1.5h",
        "1h 30m",
        " 1h",
        "1h ",
        "4H",
        "1y",
        "1M",
        "500ms",
        "1hours",
        "+1h",
        "1h-",
        "1ｈ",
        "١h",
        // Too long and malformed: malformed wins, as in the pattern.
        "539w6s-shh-",
        "9999w-",
    ];
    for s in good {
        assert!(s.parse::<Ttl>().is_ok(), "{s:?} should parse");
        assert_pattern_agrees(&re, s);
    }
    for s in bad {
        assert!(s.parse::<Ttl>().is_err(), "{s:?} should not parse");
        assert_pattern_agrees(&re, s);
    }
    // The documented exception: too long, matches the pattern, refused by the parser.
    for s in ["521w", "99999999999999999999999999h", "520w1s"] {
        assert!(re.is_match(s));
        assert!(matches!(
            s.parse::<Ttl>(),
            Err(previewd_core::TtlError::TooLong { .. })
        ));
    }
}

proptest! {
    #[test]
    fn ttl_display_parse_round_trip(secs in 1..=Ttl::MAX.as_secs()) {
        let ttl = Ttl::from_secs(secs).unwrap();
        let text = ttl.to_string();
        prop_assert_eq!(text.parse::<Ttl>().unwrap(), ttl);
        prop_assert_eq!(ttl.as_duration(), Duration::from_secs(secs));
        prop_assert!(ttl_regex().is_match(&text));
        let json = serde_json::to_string(&ttl).unwrap();
        prop_assert_eq!(serde_json::from_str::<Ttl>(&json).unwrap(), ttl);
    }

    #[test]
    fn ttl_pattern_agrees_on_generated_strings(input in "[0-9smhdwx -]{0,12}|([1-9][0-9]{0,2}[smhdw]){5,12}") {
        assert_pattern_agrees(&ttl_regex(), &input);
    }

    #[test]
    fn ttl_parser_never_panics(input in any::<String>()) {
        if let Err(e) = input.parse::<Ttl>() {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------
// Expiry
// ---------------------------------------------------------------------------------

fn timestamp() -> impl Strategy<Value = Timestamp> {
    // 2000-01-01 .. 2100-01-01
    (946_684_800i64..4_102_444_800).prop_map(|s| Timestamp::from_second(s).unwrap())
}

fn ttl_secs() -> impl Strategy<Value = Ttl> {
    (1u64..=60 * 86_400).prop_map(|s| Ttl::from_secs(s).unwrap())
}

fn policy() -> impl Strategy<Value = ExpiryPolicy> {
    (ttl_secs(), any::<bool>(), ttl_secs(), any::<bool>()).prop_map(
        |(ttl, auto_extend, max_lifespan, do_not_expire)| ExpiryPolicy {
            ttl,
            auto_extend,
            max_lifespan,
            do_not_expire,
        },
    )
}

proptest! {
    #[test]
    fn expiry_never_exceeds_hard_cap(
        policy in policy(),
        created in timestamp(),
        offsets in prop::collection::vec(-86_400i64..30 * 86_400, 0..32),
    ) {
        let cap = created
            .checked_add(policy.max_lifespan.as_signed_duration())
            .unwrap();
        prop_assert!(policy.expires_at(created, None) <= cap);
        let mut last_activity = None;
        for offset in offsets {
            let activity = created.checked_add(SignedDuration::from_secs(offset)).unwrap();
            last_activity = Some(last_activity.map_or(activity, |a: Timestamp| a.max(activity)));
            let expiry = policy.expires_at(created, last_activity);
            prop_assert!(expiry <= cap, "{expiry} after cap {cap}");
            // Never earlier than the plain TTL (or the cap, whichever is first).
            let plain = created.checked_add(policy.ttl.as_signed_duration()).unwrap().min(cap);
            prop_assert!(expiry >= plain);
        }
    }

    #[test]
    fn expiry_is_monotone_in_last_activity(
        policy in policy(),
        created in timestamp(),
        a in -86_400i64..30 * 86_400,
        b in -86_400i64..30 * 86_400,
    ) {
        let (early, late) = (a.min(b), a.max(b));
        let at = |o: i64| created.checked_add(SignedDuration::from_secs(o)).unwrap();
        let none = policy.expires_at(created, None);
        let e1 = policy.expires_at(created, Some(at(early)));
        let e2 = policy.expires_at(created, Some(at(late)));
        prop_assert!(none <= e1 && e1 <= e2);
    }

    #[test]
    fn do_not_expire_still_hits_the_cap(policy in policy(), created in timestamp(), act in 0i64..86_400) {
        let policy = ExpiryPolicy { do_not_expire: true, ..policy };
        let cap = created.checked_add(policy.max_lifespan.as_signed_duration()).unwrap();
        let activity = created.checked_add(SignedDuration::from_secs(act)).unwrap();
        prop_assert_eq!(policy.expires_at(created, Some(activity)), cap);
        prop_assert!(policy.is_expired(cap, created, Some(activity)));
    }

    #[test]
    fn remaining_plus_now_is_expiry(policy in policy(), created in timestamp(), elapsed in 0i64..90 * 86_400) {
        let now = created.checked_add(SignedDuration::from_secs(elapsed)).unwrap();
        let expiry = policy.expires_at(created, None);
        let remaining = policy.remaining(now, created, None);
        if policy.is_expired(now, created, None) {
            prop_assert_eq!(remaining, Duration::ZERO);
        } else {
            prop_assert_eq!(now.checked_add(remaining).unwrap(), expiry);
        }
    }
}

// ---------------------------------------------------------------------------------
// Money and cost
// ---------------------------------------------------------------------------------

fn money() -> impl Strategy<Value = Money> {
    (0i64..=1_000_000_000_000_000).prop_map(Money::from_micros)
}

proptest! {
    #[test]
    fn sum_of_parts_equals_total(parts in prop::collection::vec(money(), 0..200)) {
        let expected: i128 = parts.iter().map(|m| m.micros() as i128).sum();
        let checked = Money::checked_sum(parts.iter().copied()).unwrap();
        let summed: Money = parts.iter().sum();
        prop_assert_eq!(checked.micros() as i128, expected);
        prop_assert_eq!(summed, checked);
    }

    #[test]
    fn splitting_a_total_loses_nothing(total in money(), cuts in prop::collection::vec(0.0f64..1.0, 0..20)) {
        // Cut the total at arbitrary points; the pieces add back to the total exactly.
        let mut points: Vec<i64> = cuts
            .iter()
            .map(|f| (total.micros() as f64 * f) as i64)
            .collect();
        points.push(0);
        points.push(total.micros());
        points.sort_unstable();
        let pieces: Vec<Money> = points
            .windows(2)
            .map(|w| Money::from_micros(w[1]).checked_sub(Money::from_micros(w[0])).unwrap())
            .collect();
        prop_assert_eq!(Money::checked_sum(pieces).unwrap(), total);
    }

    #[test]
    fn money_display_parse_round_trip(m in money()) {
        let shown = m.to_string();
        let parsed: Money = shown.parse().unwrap();
        prop_assert_eq!(parsed, m.round_to_cents());
        prop_assert!((parsed.micros() - m.micros()).abs() <= 5_000);
        let exact: Money = m.to_exact_string().parse().unwrap();
        prop_assert_eq!(exact, m);
        let json = serde_json::to_string(&m).unwrap();
        prop_assert_eq!(serde_json::from_str::<Money>(&json).unwrap(), m);
        let re = Regex::new(Money::PATTERN).unwrap();
        prop_assert!(re.is_match(&shown) && re.is_match(&m.to_exact_string()));
    }

    #[test]
    fn cents_round_trip_exactly(cents in 0i64..1_000_000_000_000) {
        let m = Money::from_cents(cents);
        prop_assert_eq!(m.to_string().parse::<Money>().unwrap(), m);
    }

    #[test]
    fn money_pattern_agrees_with_parser(input in "[$0-9.,-]{0,24}") {
        let re = Regex::new(Money::PATTERN).unwrap();
        match input.parse::<Money>() {
            Ok(_) => prop_assert!(re.is_match(&input), "{input:?} parses, pattern refuses"),
            Err(previewd_core::MoneyError::Overflow { .. }) => prop_assert!(re.is_match(&input)),
            Err(e) => prop_assert!(!re.is_match(&input), "{input:?} matches, parser says {e}"),
        }
    }

    #[test]
    fn estimate_parts_add_up(
        cpu in 0u64..1_000_000,
        memory in 0u64..(1u64 << 44),
        storage in 0u64..(1u64 << 44),
        cpu_price in 0i64..10_000_000,
        memory_price in 0i64..10_000_000,
        storage_price in 0i64..10_000_000,
        secs in 0u64..(366 * 86_400),
    ) {
        let pricing = Pricing {
            cpu_per_core_hour: Money::from_micros(cpu_price),
            memory_per_gib_hour: Money::from_micros(memory_price),
            storage_per_gib_month: Money::from_micros(storage_price),
            network_per_hour: Money::ZERO,
        };
        let requests = ResourceRequests { cpu_millicores: cpu, memory_bytes: memory };
        let est = CostEstimate::estimate_with_storage(&requests, storage, &pricing);
        prop_assert_eq!(est.breakdown.total(), est.hourly);
        prop_assert_eq!(Some(est.daily), est.hourly.checked_mul(24));
        prop_assert_eq!(Some(est.monthly), est.hourly.checked_mul(730));
        // Accrual over whole hours is exact; over arbitrary times it is within half a
        // micro-dollar of the exact value.
        let hours = secs / 3600;
        prop_assert_eq!(Some(est.accrued(Duration::from_secs(hours * 3600))), est.hourly.checked_mul(hours));
        let exact = est.hourly.micros() as f64 * secs as f64 / 3600.0;
        prop_assert!((est.accrued(Duration::from_secs(secs)).micros() as f64 - exact).abs() <= 0.5 + exact * 1e-12);
        // Compute cost is the exactly rounded CPU + memory price.
        let exact_compute = (cpu as f64 * cpu_price as f64 / 1000.0)
            + (memory as f64 * memory_price as f64 / (1u64 << 30) as f64);
        prop_assert!((est.breakdown.compute.micros() as f64 - exact_compute).abs() <= 0.5 + exact_compute * 1e-12);
    }

    #[test]
    fn money_parser_never_panics(input in any::<String>()) {
        if let Err(e) = input.parse::<Money>() {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

// ---------------------------------------------------------------------------------
// Quantities
// ---------------------------------------------------------------------------------

/// Text shaped like a quantity, right or slightly wrong in each part: sign, digits,
/// point, fraction, suffix (valid, invalid, exponents of any length), and lengths around
/// the limit.
fn quantity_like() -> impl Strategy<Value = String> {
    let sign = prop_oneof![Just(""), Just("+"), Just("-"), Just("++")];
    let digits = "[0-9]{0,30}";
    let point = prop_oneof![Just(""), Just("."), Just("..")];
    let fraction = "[0-9]{0,30}";
    let suffix = prop_oneof![
        prop::sample::select(vec![
            "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E",
            "K", "KI", "ki", "mi", "Ei ", "i", "e", "E", "e+", "e-", "x", " ", "k8",
        ])
        .prop_map(str::to_string),
        ("[eE]", "[-+]?", "[0-9]{0,12}", "[.0-9]{0,2}")
            .prop_map(|(e, sign, digits, tail)| format!("{e}{sign}{digits}{tail}")),
    ];
    (sign, digits, point, fraction, suffix).prop_map(|(sign, digits, point, fraction, suffix)| {
        format!("{sign}{digits}{point}{fraction}{suffix}")
    })
}

fn assert_quantity_schema_agrees(input: &str) {
    let rule = Regex::new(previewd_core::cost::QUANTITY_PATTERN).unwrap();
    let admitted = input.len() <= previewd_core::cost::QUANTITY_MAX_LENGTH && rule.is_match(input);
    for (unit, parsed) in [
        ("millicores", parse_cpu(input).map_err(|e| e.to_string())),
        ("bytes", parse_memory(input).map_err(|e| e.to_string())),
    ] {
        match parsed {
            Ok(value) => assert!(
                admitted,
                "{input:?} parses ({value} {unit}) but the schema refuses it"
            ),
            Err(e) => assert!(
                !admitted,
                "{input:?} is admitted by the schema but does not parse: {e}"
            ),
        }
    }
}

proptest! {
    #[test]
    fn quantity_parsers_never_panic(input in any::<String>()) {
        for result in [parse_cpu(&input), parse_memory(&input)] {
            if let Err(e) = result {
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }

    #[test]
    fn quantity_parsers_never_panic_on_quantity_like_input(input in "[-+0-9.eEkMGTPKimnu ]{0,24}") {
        for result in [parse_cpu(&input), parse_memory(&input)] {
            if let Err(e) = result {
                prop_assert!(!e.to_string().is_empty());
                prop_assert!(!e.category().is_empty());
            }
        }
    }

    #[test]
    fn formatted_quantities_parse_back(millicores in any::<u64>(), bytes in any::<u64>()) {
        prop_assert_eq!(parse_cpu(&format_cpu(millicores)).unwrap(), millicores);
        prop_assert_eq!(parse_memory(&format_memory(bytes)).unwrap(), bytes);
    }

    /// What the CRD schema admits (its rule and its length) parses, and what parses is
    /// admitted: on near-quantities, where the two could disagree.
    #[test]
    fn quantity_schema_and_parsers_agree(input in quantity_like()) {
        assert_quantity_schema_agrees(&input);
    }

    /// The same on any short text over the characters of quantities.
    #[test]
    fn quantity_schema_and_parsers_agree_on_any_text(input in "[-+0-9.eEkKMGTPimnu ]{0,24}") {
        assert_quantity_schema_agrees(&input);
    }

    #[test]
    fn suffixes_scale_exactly(n in 0u64..1_000_000) {
        prop_assert_eq!(parse_cpu(&format!("{n}m")).unwrap(), n);
        prop_assert_eq!(parse_cpu(&n.to_string()).unwrap(), n * 1000);
        prop_assert_eq!(parse_memory(&format!("{n}Ki")).unwrap(), n << 10);
        prop_assert_eq!(parse_memory(&format!("{n}Mi")).unwrap(), n << 20);
        prop_assert_eq!(parse_memory(&format!("{n}M")).unwrap(), n * 1_000_000);
        prop_assert_eq!(parse_memory(&format!("{n}e3")).unwrap(), n * 1000);
        // Milli-bytes round up to whole bytes.
        prop_assert_eq!(parse_memory(&format!("{n}m")).unwrap(), n.div_ceil(1000));
    }
}

// ---------------------------------------------------------------------------------
// Naming
// ---------------------------------------------------------------------------------

fn branch() -> impl Strategy<Value = String> {
    prop_oneof![
        // Arbitrary Unicode, up to 250 characters.
        prop::collection::vec(any::<char>(), 0..=250).prop_map(String::from_iter),
        // Branch-like text, likely to collide after sanitising.
        "[a-zA-Z0-9/._-]{0,80}",
        // Long branches sharing a 60-character prefix.
        "[a-z-]{0,20}".prop_map(|s| format!("{}{s}", "shared-prefix-".repeat(5))),
        // Hash look-alikes.
        "[a-z]{0,6}-[0-9a-f]{8}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn namespace_names_are_valid_labels(pr in any::<u64>(), branch in branch()) {
        let name = namespace_name(pr, &branch);
        prop_assert!(is_dns1123_label(&name), "{name:?} from {branch:?}");
        let prefix = format!("preview-{pr}");
        prop_assert!(name.starts_with(&prefix));
        let env = environment_name(&branch, pr);
        prop_assert!(is_dns1123_label(&env), "{env:?} from {branch:?}");
        prop_assert!(is_dns1123_subdomain(&ingress_host(pr, "preview.example.com")));
        // Deterministic.
        prop_assert_eq!(namespace_name(pr, &branch), name);
    }

    #[test]
    fn distinct_inputs_get_distinct_names(
        a in (0u64..4, branch()),
        b in (0u64..4, branch()),
    ) {
        if a != b {
            prop_assert_ne!(namespace_name(a.0, &a.1), namespace_name(b.0, &b.1), "{:?} vs {:?}", a, b);
        }
    }

    #[test]
    fn a_name_used_as_a_branch_does_not_collide(pr in 0u64..1000, branch in branch()) {
        // Adversarial: a branch spelled like another branch's sanitised, hashed name.
        let name = namespace_name(pr, &branch);
        let prefix = format!("preview-{pr}-");
        let spelled = name.strip_prefix(&prefix).unwrap();
        if spelled != branch {
            prop_assert_ne!(namespace_name(pr, spelled), name);
        }
        let env = environment_name(&branch, pr);
        let repo = env.strip_suffix(&format!("-pr-{pr}")).unwrap();
        if repo != branch.rsplit('/').next().unwrap() {
            prop_assert_ne!(environment_name(repo, pr), env);
        }
    }

    #[test]
    fn distinct_small_variations_get_distinct_names(base in "[a-z/_.-]{1,70}", pr in 0u64..1000) {
        let variants = [
            base.clone(),
            base.to_uppercase(),
            format!("{base}/"),
            format!("{base}-"),
            format!("{base}x"),
            base.replace('/', "-"),
            base.replace('-', "_"),
        ];
        let unique_inputs: BTreeSet<&String> = variants.iter().collect();
        let names: BTreeSet<String> = unique_inputs.iter().map(|b| namespace_name(pr, b)).collect();
        prop_assert_eq!(names.len(), unique_inputs.len());
    }

    #[test]
    fn distinct_repos_get_distinct_environment_names(
        a in (0u64..4, "[a-zA-Z0-9._-]{1,80}"),
        b in (0u64..4, "[a-zA-Z0-9._-]{1,80}"),
    ) {
        if a != b {
            prop_assert_ne!(environment_name(&a.1, a.0), environment_name(&b.1, b.0));
        }
    }
}

// ---------------------------------------------------------------------------------
// Image templates
// ---------------------------------------------------------------------------------

/// Text built from pieces of image references and of right and wrong variables.
fn image_template_like() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "ghcr.io/acme/",
        "web",
        ":",
        "pr-",
        "-",
        "_",
        ".",
        "@sha256",
        " ",
        "é",
        "{{number}}",
        "{{sha}}",
        "{{shortSha}}",
        "{{branch}}",
        "{{service}}",
        "{{nubmer}}",
        "{{Number}}",
        "{{ number }}",
        "{{number }}",
        "{{a_1}}",
        "{{1a}}",
        "{{}}",
        "{{",
        "}}",
        "{",
        "}",
        "{{{",
        "}}}",
        "{{.Values.tag}}",
    ]);
    prop::collection::vec(piece, 0..8).prop_map(|pieces| pieces.concat())
}

proptest! {
    /// The schema's rule admits exactly the templates the renderer accepts.
    #[test]
    fn image_template_rule_and_renderer_agree(template in image_template_like()) {
        use previewd_core::image_template::{TEMPLATE_PATTERN, check};
        let admitted = Regex::new(TEMPLATE_PATTERN).unwrap().is_match(&template);
        prop_assert_eq!(admitted, check(&template).is_ok(), "{:?}: {:?}", template, check(&template));
    }
}
