//! Node facts that the Nomad client sends in `SetConfig.nomad_config`: the loopback
//! port range of its plugin helpers and the CPU compute it schedules with.
//!
//! The task lifecycle needs the compute to turn a task's `cpu` in MHz into a vCPU count.
//! Nomad leaves `nomad_config` unset during its config validation pass, so the driver
//! keeps the last value it received.

use crate::proto::base::{ClientTopology, NomadConfig};

/// The Nomad client's view of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Lowest and highest loopback port the client uses to reach plugin helpers such as
    /// its log collectors (`client_min_port`..`client_max_port`), not task ports.
    pub client_ports: Option<(u16, u16)>,
    pub compute: Option<NodeCompute>,
}

/// CPU compute of the node, computed as Nomad computes it from the topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCompute {
    /// Total compute in MHz.
    pub total_mhz: u64,
    /// Number of cores, disabled ones included.
    pub cores: usize,
}

impl NodeInfo {
    pub fn from_proto(config: &NomadConfig) -> Self {
        let driver = config.driver.as_ref();
        let client_ports = driver.and_then(|driver| {
            let min = u16::try_from(driver.client_min_port).ok()?;
            let max = u16::try_from(driver.client_max_port).ok()?;
            (min > 0 && min <= max).then_some((min, max))
        });
        let compute = driver
            .and_then(|driver| driver.topology.as_ref())
            .map(NodeCompute::from_topology);

        Self {
            client_ports,
            compute,
        }
    }
}

impl NodeCompute {
    /// Uses `override_total_compute` when it is set, and otherwise sums each core's base
    /// speed, falling back to its maximum and then its guessed speed.
    pub fn from_topology(topology: &ClientTopology) -> Self {
        let summed: u64 = topology
            .cores
            .iter()
            .map(|core| {
                [core.base_speed, core.max_speed, core.guess_speed]
                    .into_iter()
                    .find(|speed| *speed > 0)
                    .unwrap_or(0)
            })
            .sum();
        let total_mhz = match topology.override_total_compute {
            0 => summed,
            overridden => overridden,
        };

        Self {
            total_mhz,
            cores: topology.cores.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::base::{ClientTopologyCore, NomadDriverConfig};

    fn core(base_speed: u64, max_speed: u64, guess_speed: u64) -> ClientTopologyCore {
        ClientTopologyCore {
            base_speed,
            max_speed,
            guess_speed,
            ..ClientTopologyCore::default()
        }
    }

    #[test]
    fn compute_sums_first_known_speed() {
        let topology = ClientTopology {
            cores: vec![
                core(3000, 4000, 0),
                core(0, 2400, 0),
                core(0, 0, 1000),
                core(0, 0, 0),
            ],
            ..ClientTopology::default()
        };
        let compute = NodeCompute::from_topology(&topology);

        assert_eq!(compute.total_mhz, 6400);
        assert_eq!(compute.cores, 4);
    }

    #[test]
    fn compute_override_wins() {
        let topology = ClientTopology {
            cores: vec![core(3000, 0, 0)],
            override_total_compute: 8000,
            ..ClientTopology::default()
        };
        assert_eq!(NodeCompute::from_topology(&topology).total_mhz, 8000);
    }

    #[test]
    fn ports_need_valid_range() {
        let config = |min, max| NomadConfig {
            driver: Some(NomadDriverConfig {
                client_min_port: min,
                client_max_port: max,
                topology: None,
            }),
        };

        assert_eq!(
            NodeInfo::from_proto(&config(14000, 14512)).client_ports,
            Some((14000, 14512))
        );
        assert_eq!(NodeInfo::from_proto(&config(0, 0)).client_ports, None);
        assert_eq!(
            NodeInfo::from_proto(&config(15000, 14000)).client_ports,
            None
        );
        assert_eq!(
            NodeInfo::from_proto(&config(14000, 70000)).client_ports,
            None
        );
    }
}
