//! Placement (hwloc2): the topology summary for the manifest, and where the recorder and
//! the load generator run. Policies: `shared` (no binding; everything competes for every
//! core), `separate` (recorder on the upper half of the PUs, generator threads on the lower
//! half). The recorder is started under `taskset -c`; the harness binds itself with hwloc.
//! SQPOLL threads follow the recorder's own `ring.*` knobs (SQ_AFF) and inherit its mask.

use hwloc2::{CpuBindFlags, CpuSet, ObjectType, Topology};

#[derive(Clone, Debug, Default)]
pub struct Topo {
    pub summary: String,
    /// OS indexes of the processing units.
    pub pus: Vec<u32>,
    pub numa_nodes: usize,
}

impl Topo {
    pub fn discover() -> Topo {
        let Some(t) = Topology::new() else {
            let n = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1) as u32;
            return Topo {
                summary: format!("hwloc unavailable; {n} CPUs"),
                pus: (0..n).collect(),
                numa_nodes: 1,
            };
        };
        let mut parts = Vec::new();
        for d in 0..t.depth() {
            parts.push(format!("{:?}:{}", t.type_at_depth(d), t.size_at_depth(d)));
        }
        let pus: Vec<u32> = t
            .objects_with_type(&ObjectType::PU)
            .map(|v| v.iter().map(|o| o.os_index()).collect())
            .unwrap_or_default();
        // NUMA nodes sit at a special (negative) depth that hwloc2 2.2 cannot index: ask sysfs.
        let numa_nodes = std::fs::read_dir("/sys/devices/system/node")
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .strip_prefix("node")
                            .is_some_and(|n| n.parse::<u32>().is_ok())
                    })
                    .count()
            })
            .unwrap_or(1)
            .max(1);
        let summary = format!(
            "{}; PUs {:?}; NUMA nodes {numa_nodes}",
            parts.join(" "),
            pus
        );
        Topo {
            summary,
            pus,
            numa_nodes,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub policy: String,
    pub recorder_cpus: Option<String>,
    pub generator_cpus: Option<String>,
}

impl Plan {
    pub fn describe(&self) -> String {
        match (&self.recorder_cpus, &self.generator_cpus) {
            (None, None) => self.policy.clone(),
            (r, g) => format!(
                "{}:recorder={};generator={}",
                self.policy,
                r.as_deref().unwrap_or("all"),
                g.as_deref().unwrap_or("all")
            ),
        }
    }
}

fn list(p: &[u32]) -> String {
    p.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

pub fn plan(t: &Topo, policy: &str) -> Result<Plan, String> {
    match policy {
        "shared" => Ok(Plan {
            policy: "shared".into(),
            ..Default::default()
        }),
        "separate" => {
            if t.pus.len() < 2 {
                return Err(format!(
                    "placement.policy = separate needs at least 2 PUs; this machine has {}",
                    t.pus.len()
                ));
            }
            let half = t.pus.len() / 2;
            Ok(Plan {
                policy: "separate".into(),
                generator_cpus: Some(list(&t.pus[..half])),
                recorder_cpus: Some(list(&t.pus[half..])),
            })
        }
        p => Err(format!("placement.policy = {p:?}; use shared or separate")),
    }
}

/// Binds every thread of this process to `cpus` ("0,1"), or to all PUs when None.
pub fn bind_self(t: &Topo, cpus: Option<&str>) -> Result<(), String> {
    let ids: Vec<u32> = match cpus {
        Some(c) => c.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        None => t.pus.clone(),
    };
    let mut topo = Topology::new().ok_or("hwloc topology unavailable")?;
    let mut set = CpuSet::new();
    for i in ids {
        set.set(i);
    }
    topo.set_cpubind(set, CpuBindFlags::CPUBIND_PROCESS)
        .map_err(|e| format!("hwloc set_cpubind: {e:?}"))
}
