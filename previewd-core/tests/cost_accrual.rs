//! The estimator on pods with mixed units and init containers, and the spend to date over
//! a simulated week (scaling, pod churn, sleep, operator restarts, stale reads, lost
//! writes) checked against a straightforward integral of the rate.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use jiff::Timestamp;
use previewd_core::{
    Accrual, CostEstimate, InitContainer, Money, PodRequests, Pricing, ResourceRequests, parse_cpu,
    parse_memory,
};
use proptest::prelude::*;

fn r(cpu: &str, mem: &str) -> ResourceRequests {
    ResourceRequests::from_quantities(cpu, mem).unwrap()
}

const CPU_FORMS: [(&str, u64); 6] = [
    ("250m", 250),
    ("0.25", 250),
    ("1", 1000),
    ("1500m", 1500),
    ("100000u", 100),
    ("0.1", 100),
];
const MEM_FORMS: [(&str, u64); 6] = [
    ("512Mi", 512 << 20),
    ("536870912", 512 << 20),
    ("0.5Gi", 512 << 20),
    ("1G", 1_000_000_000),
    ("1e9", 1_000_000_000),
    ("128974848000m", 128_974_848),
];

prop_compose! {
    fn container()(c in 0..CPU_FORMS.len(), m in 0..MEM_FORMS.len()) -> (ResourceRequests, u64, u64) {
        let (cpu, cpu_m) = CPU_FORMS[c];
        let (mem, mem_b) = MEM_FORMS[m];
        (r(cpu, mem), cpu_m, mem_b)
    }
}

prop_compose! {
    fn pod()(
        apps in prop::collection::vec(container(), 0..4),
        inits in prop::collection::vec((container(), any::<bool>()), 0..4),
        overhead in prop::option::of(container()),
    ) -> (PodRequests, Vec<(u64, u64)>, Vec<(u64, u64, bool)>, (u64, u64)) {
        let pod = PodRequests {
            containers: apps.iter().map(|c| c.0).collect(),
            init_containers: inits.iter().map(|(c, s)| InitContainer { requests: c.0, sidecar: *s }).collect(),
            overhead: overhead.map(|o| o.0).unwrap_or_default(),
        };
        (
            pod,
            apps.iter().map(|c| (c.1, c.2)).collect(),
            inits.iter().map(|(c, s)| (c.1, c.2, *s)).collect(),
            overhead.map(|o| (o.1, o.2)).unwrap_or((0, 0)),
        )
    }
}

/// The scheduler's rule for one resource, written out the slow way: simulate the pod's
/// start-up, one init container after the other, and take the peak.
fn peak(apps: &[u64], inits: &[(u64, bool)], overhead: u64) -> u64 {
    let mut running_sidecars = 0;
    let mut peak = 0;
    for (value, sidecar) in inits {
        peak = peak.max(running_sidecars + value);
        if *sidecar {
            running_sidecars += value;
        }
    }
    peak.max(running_sidecars + apps.iter().sum::<u64>()) + overhead
}

proptest! {
    #[test]
    fn pod_requests_follow_the_scheduler((pod, apps, inits, overhead) in pod()) {
        let eff = pod.effective();
        let cpu_apps: Vec<u64> = apps.iter().map(|a| a.0).collect();
        let mem_apps: Vec<u64> = apps.iter().map(|a| a.1).collect();
        let cpu_inits: Vec<(u64, bool)> = inits.iter().map(|i| (i.0, i.2)).collect();
        let mem_inits: Vec<(u64, bool)> = inits.iter().map(|i| (i.1, i.2)).collect();
        prop_assert_eq!(eff.cpu_millicores, peak(&cpu_apps, &cpu_inits, overhead.0));
        prop_assert_eq!(eff.memory_bytes, peak(&mem_apps, &mem_inits, overhead.1));
        // Never less than the app containers, nor than any single init container.
        let apps_sum: ResourceRequests = pod.containers.iter().sum();
        prop_assert!(eff.cpu_millicores >= apps_sum.cpu_millicores);
        prop_assert!(eff.memory_bytes >= apps_sum.memory_bytes);
        for i in &pod.init_containers {
            prop_assert!(eff.cpu_millicores >= i.requests.cpu_millicores);
        }
    }

    #[test]
    fn units_do_not_change_the_price(c in 0..CPU_FORMS.len(), m in 0..MEM_FORMS.len(), replicas in 0u64..10) {
        // The same amount written two ways costs the same.
        let (cpu, cpu_m) = CPU_FORMS[c];
        let (mem, mem_b) = MEM_FORMS[m];
        prop_assert_eq!(parse_cpu(cpu).unwrap(), cpu_m);
        prop_assert_eq!(parse_memory(mem).unwrap(), mem_b);
        let a = CostEstimate::estimate(&r(cpu, mem).scaled(replicas), &Pricing::default());
        let b = CostEstimate::estimate(&ResourceRequests { cpu_millicores: cpu_m, memory_bytes: mem_b }.scaled(replicas), &Pricing::default());
        prop_assert_eq!(a, b);
    }

    #[test]
    fn accrual_in_any_steps_is_the_integral(steps in prop::collection::vec((1i64..20_000, 0i64..5_000_000, any::<bool>()), 1..200)) {
        // Each step: seconds elapsed, the rate observed at its end, whether the status
        // write of that reconcile was lost (only when the rate did not change).
        let start = Timestamp::from_second(1_800_000_000).unwrap();
        let mut persisted = Accrual::start(start, Money::ZERO);
        let mut rate = 0i64;
        let mut now = start;
        let mut exact: i128 = 0;
        for (secs, new_rate, lose) in steps {
            exact += i128::from(rate) * i128::from(secs);
            now = now.checked_add(jiff::SignedDuration::from_secs(secs)).unwrap();
            let next = persisted.observe(now, start, Money::from_micros(new_rate));
            if !(lose && new_rate == rate) {
                persisted = next;
            }
            rate = new_rate;
        }
        let end = persisted.advance(now, start);
        prop_assert_eq!(i128::from(end.spent.micros()), exact / 3600);
    }
}

/// A small deterministic generator (xorshift64*), so the week is the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What runs: replicas of two services (one with an init container), and a volume.
#[derive(Clone, Copy)]
struct Running {
    api: u64,
    worker: u64,
    churned: bool,
    asleep: bool,
}

fn rate_of(state: Running, pricing: &Pricing) -> Money {
    let api = PodRequests {
        containers: vec![r("250m", "512Mi"), r("50m", "64Mi")],
        init_containers: vec![InitContainer {
            requests: r("1", "128Mi"),
            sidecar: false,
        }],
        overhead: r("10m", "32Mi"),
    };
    let worker = PodRequests {
        containers: vec![r("0.5", "1G")],
        ..PodRequests::default()
    };
    let (api_n, worker_n) = if state.asleep {
        (0, 0)
    } else {
        (
            state.api,
            state.worker.saturating_sub(u64::from(state.churned)),
        )
    };
    let requests = api.effective().scaled(api_n) + worker.effective().scaled(worker_n);
    let storage = parse_memory("10Gi").unwrap() + parse_memory("500M").unwrap();
    CostEstimate::estimate_running(&requests, storage, api_n + worker_n > 0, pricing).hourly
}

#[test]
fn a_week_with_restarts_scaling_and_sleep_is_exact() {
    let pricing = Pricing {
        network_per_hour: Money::from_micros(1_234),
        ..Pricing::default()
    };
    let created = Timestamp::from_second(1_800_000_000).unwrap();
    let week = 7 * 86_400;
    let mut rng = Rng(0x5EED_C057);
    let mut state = Running {
        api: 2,
        worker: 1,
        churned: false,
        asleep: false,
    };
    // What the API server holds, and the previous value (a stale cache may show it).
    let mut persisted = Accrual::start(created, rate_of(state, &pricing));
    let mut previous = persisted;
    let mut exact_units: i128 = 0; // 1/3600 micro-dollars
    let mut t = 0i64;
    let mut rate = rate_of(state, &pricing);
    let (mut restarts, mut stale_reads, mut lost_writes, mut changes) = (0, 0, 0, 0);
    let every = Duration::from_secs(900);
    let reconcile = |t: i64,
                     rate: Money,
                     stale: bool,
                     lose: bool,
                     persisted: &mut Accrual,
                     previous: &mut Accrual| {
        let now = created
            .checked_add(jiff::SignedDuration::from_secs(t))
            .unwrap();
        let mut read = if stale { *previous } else { *persisted };
        let mut next = read.persisted(now, created, rate, every);
        if next != read && read != *persisted {
            // The status write carries the resourceVersion it was computed from: the API
            // server refuses a write based on a stale read, and the reconcile runs again
            // on the current object.
            read = *persisted;
            next = read.persisted(now, created, rate, every);
        }
        if !lose && next != read {
            *previous = *persisted;
            *persisted = next;
        }
    };
    while t < week {
        let step = 1 + rng.below(1800) as i64;
        let step = step.min(week - t);
        exact_units += i128::from(rate.micros()) * i128::from(step);
        t += step;
        let mut stale = rng.below(10) == 0;
        let mut lose = false;
        match rng.below(12) {
            // Scale a service (the controller applies replicas and sees the pods).
            0..=2 => {
                state.api = rng.below(4);
                state.worker = 1 + rng.below(3);
                changes += 1;
            }
            // A pod dies or comes back.
            3 | 4 => {
                state.churned = !state.churned;
                changes += 1;
            }
            // Sleep or wake: no pods, the volume stays.
            5 => {
                state.asleep = !state.asleep;
                changes += 1;
            }
            // The operator restarts: nothing runs for a while (pods do not change
            // meanwhile), then the first reconcile reads what the API server holds.
            6 => {
                restarts += 1;
                let down = (600 + rng.below(6 * 3600) as i64).min(week - t);
                exact_units += i128::from(rate.micros()) * i128::from(down);
                t += down;
                stale = false;
            }
            // A periodic resync whose status write fails.
            7 => {
                lost_writes += 1;
                lose = true;
            }
            _ => {}
        }
        let new_rate = rate_of(state, &pricing);
        if new_rate != rate {
            // A reconcile that observes a change always persists it (a failed write is
            // retried at once and accrues the same).
            lose = false;
        }
        if stale {
            stale_reads += 1;
        }
        reconcile(t, new_rate, stale, lose, &mut persisted, &mut previous);
        rate = new_rate;
    }
    let end = created
        .checked_add(jiff::SignedDuration::from_secs(week))
        .unwrap();
    let accrued = persisted.advance(end, created);
    // The straightforward integral: rate × time, summed over every interval.
    let exact_micros = exact_units as f64 / 3600.0;
    let diff = (accrued.spent.micros() as f64 - exact_micros).abs();
    assert!(
        diff < 1.0,
        "accrued {} vs integral {exact_micros} µ$",
        accrued.spent.micros()
    );
    assert_eq!(i128::from(accrued.spent.micros()), exact_units / 3600);
    // The week exercised what it claims to.
    assert!(restarts > 10 && stale_reads > 10 && lost_writes > 10 && changes > 100);
    assert!(accrued.spent > Money::from_dollars(1), "{}", accrued.spent);
}
