//! Reading the configuration: the TOML file checked against the schema (the serialised
//! defaults), then `VOICEGATE_<SECTION>_<KEY>` overrides parsed by the type of each default.

use super::*;

/// The schema: the default configuration as a TOML table.
pub(super) fn schema() -> Table {
    Table::try_from(Config::default()).expect("the default configuration serialises to TOML")
}

pub(super) fn read_table(path: &Path, schema: &Table) -> Result<Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: Table = toml::from_str(&text).map_err(|err| {
        let offset = err.span().map_or(0, |span| span.start).min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::Syntax {
            path: path.to_owned(),
            line,
            column,
            message: one_line(err.message()),
        }
    })?;
    check_known(schema, &table, "", path)?;
    Ok(table)
}

/// Rejects sections and keys of `table` that do not exist in `schema`.
pub(super) fn check_known(
    schema: &Table,
    table: &Table,
    prefix: &str,
    path: &Path,
) -> Result<(), ConfigError> {
    for (key, value) in table {
        let dotted = join_key(prefix, key);
        match (schema.get(key), value) {
            (None, Value::Table(_)) if prefix.is_empty() => {
                return Err(ConfigError::UnknownSection {
                    section: dotted,
                    path: path.to_owned(),
                })
            }
            (None, _) => {
                return Err(ConfigError::UnknownKey {
                    key: dotted,
                    path: path.to_owned(),
                })
            }
            (Some(Value::Table(sub_schema)), Value::Table(sub)) => {
                check_known(sub_schema, sub, &dotted, path)?
            }
            (Some(Value::Table(_)), other) => {
                return Err(ConfigError::InvalidType {
                    message: format!("expected a section [{dotted}], found {}", other.type_str()),
                    key: dotted,
                    origin: format!("in {}", path.display()),
                })
            }
            (Some(_), _) => {}
        }
    }
    Ok(())
}

/// Replaces every schema key that has an environment variable set.
pub(super) fn apply_env(
    schema: &Table,
    table: &mut Table,
    key_prefix: &str,
    var_prefix: &str,
    env: &impl Fn(&str) -> Option<String>,
    origins: &mut HashMap<String, String>,
) -> Result<(), ConfigError> {
    for (key, default) in schema {
        if (key_prefix.is_empty() && FILE_ONLY_KEYS.contains(&key.as_str()))
            || (key_prefix == "api" && key == "accounts")
        {
            continue;
        }
        let dotted = join_key(key_prefix, key);
        let var = format!("{var_prefix}_{}", key.to_ascii_uppercase());
        if let Value::Table(sub_schema) = default {
            let entry = table
                .entry(key.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            if let Value::Table(sub) = entry {
                apply_env(sub_schema, sub, &dotted, &var, env, origins)?;
            }
            continue;
        }
        let Some(raw) = env(&var) else { continue };
        let value = parse_env(default, &raw).map_err(|expected| ConfigError::InvalidEnv {
            key: dotted.clone(),
            var: var.clone(),
            value: raw.clone(),
            expected,
        })?;
        table.insert(key.clone(), value);
        origins.insert(dotted, var);
    }
    Ok(())
}

/// Parses an environment value as the type of the key's default value.
/// Lists are comma-separated, items trimmed, empty items dropped.
pub(super) fn parse_env(default: &Value, raw: &str) -> Result<Value, &'static str> {
    match default {
        Value::String(_) | Value::Table(_) => Ok(Value::String(raw.to_owned())),
        Value::Integer(_) => raw
            .trim()
            .parse()
            .map(Value::Integer)
            .map_err(|_| "an integer"),
        Value::Float(_) => raw.trim().parse().map(Value::Float).map_err(|_| "a number"),
        Value::Boolean(_) => match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Boolean(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Boolean(false)),
            _ => Err("true or false"),
        },
        Value::Datetime(_) => raw
            .trim()
            .parse()
            .map(Value::Datetime)
            .map_err(|_| "a TOML date-time"),
        Value::Array(items) => {
            let item_default = items
                .first()
                .cloned()
                .unwrap_or_else(|| Value::String(String::new()));
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| parse_env(&item_default, item))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
    }
}

/// Turns a deserialisation error into one naming the offending key, found by
/// deserialising each key on its own.
pub(super) fn locate_error(
    table: &Table,
    err: &toml::de::Error,
    path: Option<&Path>,
    env_origins: &HashMap<String, String>,
) -> ConfigError {
    let origin_of = |key: &str| match (env_origins.get(key), path) {
        (Some(var), _) => format!("from {var}"),
        (None, Some(path)) => format!("in {}", path.display()),
        (None, None) => "default".to_owned(),
    };
    for (section, value) in table {
        let Value::Table(keys) = value else { continue };
        for (key, value) in keys {
            let probe = Table::from_iter([(
                section.clone(),
                Value::Table(Table::from_iter([(key.clone(), value.clone())])),
            )]);
            if let Err(err) = probe.try_into::<Config>() {
                let dotted = join_key(section, key);
                return ConfigError::InvalidType {
                    origin: origin_of(&dotted),
                    message: one_line(err.message()),
                    key: dotted,
                };
            }
        }
    }
    ConfigError::InvalidType {
        key: String::new(),
        origin: path.map_or_else(
            || "environment".to_owned(),
            |p| format!("in {}", p.display()),
        ),
        message: one_line(err.message()),
    }
}
