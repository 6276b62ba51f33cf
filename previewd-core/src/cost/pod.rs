//! What one pod requests, the way the Kubernetes scheduler counts it.
//!
//! For each resource separately (CPU, memory), the scheduler reserves
//!
//! ```text
//! max( sum(app containers) + sum(sidecars),  max over init containers i of
//!      (init_i + sum(sidecars started before i)) )  + pod overhead
//! ```
//!
//! where *sidecars* are init containers with `restartPolicy: Always` (they keep running
//! next to the app containers, so they add up; a sidecar's own start is counted with the
//! sidecars before it). Plain init containers run one at a time before the app, so only
//! the largest counts. This is the formula of the Kubernetes documentation ("Resource
//! sharing within containers", KEP-753 for sidecars) and of `kubectl describe node`.

use super::quantity::ResourceRequests;

/// One init container: its requests and whether it is a sidecar
/// (`restartPolicy: Always`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitContainer {
    /// Requests of the container.
    pub requests: ResourceRequests,
    /// `restartPolicy: Always`: keeps running beside the app containers.
    pub sidecar: bool,
}

/// The requests of one pod's containers, as its spec states them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodRequests {
    /// App containers.
    pub containers: Vec<ResourceRequests>,
    /// Init containers in spec order.
    pub init_containers: Vec<InitContainer>,
    /// `spec.overhead` (set by a RuntimeClass), added once per pod.
    pub overhead: ResourceRequests,
}

impl PodRequests {
    /// What the scheduler reserves for the pod (see the module documentation).
    pub fn effective(&self) -> ResourceRequests {
        let app: ResourceRequests = self.containers.iter().sum();
        let mut sidecars = ResourceRequests::ZERO;
        let mut init_peak = ResourceRequests::ZERO;
        for init in &self.init_containers {
            let during = if init.sidecar {
                sidecars += init.requests;
                sidecars
            } else {
                sidecars + init.requests
            };
            init_peak = max_each(init_peak, during);
        }
        max_each(app + sidecars, init_peak) + self.overhead
    }
}

/// Per-resource maximum.
fn max_each(a: ResourceRequests, b: ResourceRequests) -> ResourceRequests {
    ResourceRequests {
        cpu_millicores: a.cpu_millicores.max(b.cpu_millicores),
        memory_bytes: a.memory_bytes.max(b.memory_bytes),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn r(cpu: &str, mem: &str) -> ResourceRequests {
        ResourceRequests::from_quantities(cpu, mem).unwrap()
    }

    fn init(cpu: &str, mem: &str) -> InitContainer {
        InitContainer {
            requests: r(cpu, mem),
            sidecar: false,
        }
    }

    fn sidecar(cpu: &str, mem: &str) -> InitContainer {
        InitContainer {
            requests: r(cpu, mem),
            sidecar: true,
        }
    }

    #[test]
    fn containers_add_up() {
        let pod = PodRequests {
            containers: vec![r("250m", "512Mi"), r("0.5", "1G")],
            ..PodRequests::default()
        };
        assert_eq!(pod.effective(), r("750m", "1536870912"));
    }

    #[test]
    fn the_largest_init_container_wins_per_resource() {
        // The Kubernetes documentation's example: init 2 CPU / 100Mi, app 1 CPU / 1Gi.
        let pod = PodRequests {
            containers: vec![r("1", "1Gi")],
            init_containers: vec![init("2", "100Mi"), init("500m", "64Mi")],
            overhead: ResourceRequests::ZERO,
        };
        assert_eq!(pod.effective(), r("2", "1Gi"));
    }

    #[test]
    fn sidecars_run_beside_the_app_and_the_later_inits() {
        // sidecar 100m/128Mi, then init 1/64Mi (runs beside the sidecar), app 200m/256Mi.
        let pod = PodRequests {
            containers: vec![r("200m", "256Mi")],
            init_containers: vec![sidecar("100m", "128Mi"), init("1", "64Mi")],
            overhead: ResourceRequests::ZERO,
        };
        // init phase: 1100m / 192Mi; running: 300m / 384Mi.
        assert_eq!(pod.effective(), r("1100m", "384Mi"));
        // An init before the sidecar does not run beside it.
        let pod = PodRequests {
            containers: vec![r("200m", "256Mi")],
            init_containers: vec![init("1", "64Mi"), sidecar("100m", "128Mi")],
            overhead: ResourceRequests::ZERO,
        };
        assert_eq!(pod.effective(), r("1", "384Mi"));
    }

    #[test]
    fn overhead_is_added_once() {
        let pod = PodRequests {
            containers: vec![r("100m", "100Mi"), r("100m", "100Mi")],
            init_containers: vec![init("1", "1Mi")],
            overhead: r("250m", "120Mi"),
        };
        assert_eq!(pod.effective(), r("1250m", "320Mi"));
    }

    #[test]
    fn an_empty_pod_requests_nothing() {
        assert_eq!(PodRequests::default().effective(), ResourceRequests::ZERO);
    }
}
