//! `CONFIG`: the settings every program copies once per run, and the
//! policy generation, bumped on each change so that every flow is judged
//! again at its next packet. Also the failsafe ports, whose change is one.

use aya::maps::{Array, HashMap, MapData};
use enforcer_common::{capacity::MAX_FAILSAFE_PORTS, config::Config, map_names, ports::PortKey};

use super::{
    Dataplane, FailsafePort, UnmanagedMode,
    error::{Result, ensure_capacity, read_err, write_err},
    handles, ticks,
};

impl Dataplane {
    /// The current settings and policy generation.
    pub fn config(&self) -> Result<Config> {
        let name = map_names::CONFIG;
        handles::typed::<Array<_, Config>>(&self.ebpf, name)?
            .get(&0, 0)
            .map_err(read_err(name))
    }

    /// Writes `CONFIG`, always with this host's tick rate: a `CONFIG`
    /// adopted from an earlier daemon may lack it.
    pub(super) fn write_config(&mut self, cfg: Config) -> Result<()> {
        let cfg = Config {
            jiffies_per_second: ticks::jiffies_per_second(),
            ..cfg
        };
        let name = map_names::CONFIG;
        handles::typed_mut::<Array<_, Config>>(&mut self.ebpf, name)?
            .set(0, cfg, 0)
            .map_err(write_err(name))
    }

    /// Bumps the generation so that every flow is judged again at its next
    /// packet.
    pub(super) fn bump_generation(&mut self, change: impl FnOnce(&mut Config)) -> Result<u32> {
        let mut cfg = self.config()?;
        cfg.generation = cfg.generation.wrapping_add(1).max(1);
        change(&mut cfg);
        self.write_config(cfg)?;
        Ok(cfg.generation)
    }

    /// The slot in force (0 or 1).
    pub(super) fn active_slot(&self) -> Result<usize> {
        Ok(self.config()?.active_slot as usize & 1)
    }

    /// Stops enforcing (every program allows everything) without detaching.
    pub fn disable(&mut self) -> Result<u32> {
        self.bump_generation(|c| c.enabled = 0)
    }

    /// Enforces the last applied policy again after [`Dataplane::disable`].
    /// Does nothing before the first `apply` (there is no policy yet).
    pub fn enable(&mut self) -> Result<u32> {
        let cfg = self.config()?;
        if cfg.generation == 0 {
            return Ok(0);
        }
        self.bump_generation(|c| c.enabled = 1)
    }

    /// Sets the `--unmanaged` mode. Flows are judged again.
    pub fn set_unmanaged(&mut self, mode: UnmanagedMode) -> Result<u32> {
        self.bump_generation(|c| c.unmanaged = mode.as_config())
    }

    /// Replaces the failsafe ports. Flows are judged again.
    pub fn set_failsafe(&mut self, ports: &[FailsafePort]) -> Result<u32> {
        let name = map_names::FAILSAFE;
        ensure_capacity(&[(name, ports.len(), MAX_FAILSAFE_PORTS)])?;
        handles::clear_hash::<PortKey, u8>(&mut self.ebpf, name)?;
        let mut m: HashMap<&mut MapData, PortKey, u8> = handles::typed_mut(&mut self.ebpf, name)?;
        for p in ports {
            let key = PortKey {
                protocol: p.protocol,
                _pad: 0,
                port: p.port,
            };
            m.insert(key, 1, 0).map_err(write_err(name))?;
        }
        self.bump_generation(|_| {})
    }
}
