//! Windows: `HKLM\Software\Policies\Gangway` (mandatory) and
//! `HKLM\Software\Policies\Gangway\Recommended`, as the ADMX template in
//! `installer/policy/generated/windows/` writes them: strings as REG_SZ,
//! booleans as REG_DWORD 0/1, lists as a subkey of numbered values, the
//! environments as a subkey `Environments` of name = relay URL with their
//! CA files in `EnvironmentsCAFiles`.
//!
//! NOT COMPILED OR TESTED ON THE BUILD MACHINE (Linux, no Windows target):
//! the semantics are tested through [`super::MemoryValues`]; this file only
//! maps the registry onto [`super::ManagedValues`].

use std::collections::BTreeMap;

use winreg::enums::HKEY_LOCAL_MACHINE;
use winreg::types::FromRegValue;
use winreg::RegKey;

use super::managed::{ManagedValues, RawValue, MANAGED_FIELDS};
use super::{Key, Kind, Level};

const BASE: &str = r"Software\Policies\Gangway";

pub struct Registry;

fn path(level: Level) -> String {
    match level {
        Level::Mandatory => BASE.to_owned(),
        Level::Recommended => format!(r"{BASE}\Recommended"),
    }
}

fn values(key: &RegKey) -> BTreeMap<String, String> {
    key.enum_values()
        .filter_map(Result::ok)
        .filter_map(|(n, v)| String::from_reg_value(&v).ok().map(|s| (n, s)))
        .collect()
}

impl ManagedValues for Registry {
    fn get(&self, level: Level, name: &str) -> Option<(RawValue, String)> {
        let hklm = RegKey::predef(HKEY_LOCAL_MACHINE);
        let base = hklm.open_subkey(path(level)).ok()?;
        let origin = format!(r"HKLM\{}\{name}", path(level));
        let key = Key::from_managed_name(name)?;
        let raw = match key.kind() {
            Kind::String => RawValue::String(base.get_value::<String, _>(name).ok()?),
            Kind::Bool => RawValue::Integer(base.get_value::<u32, _>(name).ok()?.into()),
            Kind::StringList => {
                let sub = base.open_subkey(name).ok()?;
                RawValue::List(values(&sub).into_values().map(RawValue::String).collect())
            }
            Kind::Environments => {
                let sub = base.open_subkey(name).ok()?;
                let cas = base
                    .open_subkey(format!("{name}CAFiles"))
                    .map(|k| values(&k))
                    .unwrap_or_default();
                RawValue::List(
                    values(&sub)
                        .into_iter()
                        .map(|(env, relay)| {
                            let mut d = BTreeMap::from([
                                (
                                    MANAGED_FIELDS.name.to_owned(),
                                    RawValue::String(env.clone()),
                                ),
                                (MANAGED_FIELDS.relay.to_owned(), RawValue::String(relay)),
                            ]);
                            if let Some(ca) = cas.get(&env) {
                                d.insert(
                                    MANAGED_FIELDS.ca_file.to_owned(),
                                    RawValue::String(ca.clone()),
                                );
                            }
                            RawValue::Dict(d)
                        })
                        .collect(),
                )
            }
        };
        Some((raw, origin))
    }
}
