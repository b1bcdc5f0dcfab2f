//! [server] section of the configuration. Placeholder: the owner of this section fills in
//! its struct, its knob table, set/get and validate().

use super::{Config, ConfigError, Knob, Section};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerConfig {}

const KNOBS: &[Knob] = &[];

impl Section for ServerConfig {
    const NAME: &'static str = "server";
    fn knobs() -> &'static [Knob] {
        KNOBS
    }
    fn set(&mut self, name: &str, _value: &str) -> Result<(), String> {
        Err(format!("unknown option {name}"))
    }
    fn get(&self, _name: &str) -> Option<String> {
        None
    }
}

/// Cross-option rules of this section.
pub fn validate(_cfg: &Config) -> Result<(), ConfigError> {
    Ok(())
}
