//! Layered configuration: embedded defaults, then a TOML file, then `REFLEX_`-prefixed
//! environment variables (`REFLEX_<SECTION>__<FIELD>`, e.g. `REFLEX_KAFKA__GROUP_ID`; variables
//! without a `__` section separator, such as `REFLEX_TEST_BOOTSTRAP`, are not configuration).
//! Unknown fields are errors, so a typo never silently falls back to a default; so are enum
//! values outside their set (the error lists the accepted ones), durations without a unit
//! ([`crate::duration`]) and settings that were renamed ([`RENAMED`], the error says what to
//! write instead).
//!
//! Every worker's configuration is one shape, [`WorkerConfig<S>`]: the shared `kafka`,
//! `runtime`, `registry` and `telemetry` sections plus the stage's own section `S`.

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::Value;
use figment::Figment;
use reflex_core::secrets::{
    kafka_secret_properties, KAFKA_SECRET_ENV_PREFIX, KAFKA_SECRET_PROPERTIES,
};
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use thiserror::Error;

use crate::duration;

/// Defaults for the sections every worker shares (`kafka`, `runtime`, `telemetry`).
pub const RUNTIME_DEFAULTS: &str = include_str!("defaults.toml");

/// Defaults of the `registry` section, layered only for stages that use the registry.
pub const REGISTRY_DEFAULTS: &str = include_str!("registry_defaults.toml");

#[derive(Debug, Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// Settings renamed when durations became strings with a unit: `(old, new)` paths, `[]` for
/// any element of an array of tables. The loader stops on an old name with what to write
/// instead, so an old file or `REFLEX_..._MS` variable is never silently ignored.
pub const RENAMED: &[(&str, &str)] = &[
    ("kafka.session_timeout_ms", "kafka.session_timeout"),
    ("kafka.max_poll_interval_ms", "kafka.max_poll_interval"),
    ("kafka.commit_interval_ms", "kafka.commit_interval"),
    ("runtime.drain_grace_ms", "runtime.drain_grace"),
    ("runtime.retry_backoff_ms", "runtime.retry_backoff"),
    ("runtime.retry_max_backoff_ms", "runtime.retry_max_backoff"),
    ("runtime.retry_deadline_ms", "runtime.retry_deadline"),
    (
        "runtime.redelivery_backoff_ms",
        "runtime.redelivery_backoff",
    ),
    (
        "runtime.redelivery_max_backoff_ms",
        "runtime.redelivery_max_backoff",
    ),
    ("runtime.lag_interval_ms", "runtime.lag_interval"),
    ("runtime.lag_stall_after_ms", "runtime.lag_stall_after"),
    ("runtime.lag_stop_after_ms", "runtime.lag_stop_after"),
    ("registry.timeout_ms", "registry.timeout"),
    ("registry.negative_cache_ms", "registry.negative_cache"),
    ("router.max_event_age_ms", "router.max_event_age"),
    ("enricher.redis_timeout_ms", "enricher.redis_timeout"),
    ("reprocessor.foreign_delay_ms", "reprocessor.foreign_delay"),
    ("actor.kill_switch_poll_ms", "actor.kill_switch_poll"),
    ("actor.claim_lease_ms", "actor.claim_lease"),
    ("actor.claim_poll_ms", "actor.claim_poll"),
    ("actor.done_ttl_ms", "actor.done_ttl"),
    ("actor.action[].timeout_ms", "actor.action[].timeout"),
    ("actor.action[].backoff_ms", "actor.action[].backoff"),
    (
        "actor.action[].max_backoff_ms",
        "actor.action[].max_backoff",
    ),
    (
        "actor.action[].breaker_cooldown_ms",
        "actor.action[].breaker_cooldown",
    ),
    (
        "actor.action[].blast_radius_window_ms",
        "actor.action[].blast_radius_window",
    ),
    // The enricher's bindings file (`[[lookup]]` tables), checked by its own loader.
    ("lookup[].ttl_ms", "lookup[].ttl"),
    ("lookup[].timeout_ms", "lookup[].timeout"),
];

/// Messages for every renamed setting in `value` (a parsed config document). `env_name` gives
/// the environment variable a value came from (`None`: a file). Empty when nothing old is set.
pub fn renamed_settings(
    value: &Value,
    env_name: &dyn Fn(&Value, &str) -> Option<String>,
) -> Vec<String> {
    let mut found = Vec::new();
    walk(value, "", &mut |path, key, v| {
        let old = format!("{path}{key}");
        if let Some((_, new)) = RENAMED.iter().find(|(o, _)| *o == old) {
            found.push(rename_message(&old, new, v, env_name(v, &old)));
        }
    });
    found
}

/// Messages for renamed settings in a TOML document read without [`load`] (the enricher's
/// bindings file). A document that does not parse gives none: its parser reports that.
pub fn renamed_settings_in_toml(text: &str) -> Vec<String> {
    match Figment::from(Toml::string(text)).extract::<Value>() {
        Ok(value) => renamed_settings(&value, &|_, _| None),
        Err(_) => Vec::new(),
    }
}

/// Visits every table entry: `(path of its table with a trailing '.', key, value)`.
fn walk(value: &Value, path: &str, visit: &mut dyn FnMut(&str, &str, &Value)) {
    match value {
        Value::Dict(_, dict) => {
            for (key, v) in dict {
                visit(path, key, v);
                walk(v, &format!("{path}{key}."), visit);
            }
        }
        Value::Array(_, items) => {
            let path = format!("{}[].", path.trim_end_matches('.'));
            for v in items {
                walk(v, &path, visit);
            }
        }
        _ => {}
    }
}

fn rename_message(old: &str, new: &str, value: &Value, env_name: Option<String>) -> String {
    let example = match value {
        Value::Num(_, n) => n
            .to_u128()
            .or_else(|| n.to_i128().and_then(|v| u128::try_from(v).ok()))
            .and_then(|ms| u64::try_from(ms).ok())
            .map(duration::format_ms),
        Value::String(_, s) => s.trim().parse::<u64>().ok().map(duration::format_ms),
        _ => None,
    }
    .unwrap_or_else(|| "10s".into());
    let field = new.rsplit('.').next().unwrap_or(new);
    match env_name {
        Some(var) => {
            let new_var = var.strip_suffix("_MS").unwrap_or(&var);
            format!("{var} was renamed: set {new_var}={example} (a duration with a unit)")
        }
        None => {
            format!("{old} was renamed: write {field} = \"{example}\" (a duration with a unit)")
        }
    }
}

/// `REFLEX_<SECTION>__<FIELD>` variables as a configuration layer, from a given list of
/// variables (the process environment, or a test's or a rendered manifest's), skipping the
/// sections in `skip`. Values are parsed as figment's own environment provider parses them
/// (`["a"]` is an array, `{k="v"}` a table, `10` a number).
struct EnvVars {
    vars: Vec<(String, String)>,
    skip: &'static [&'static str],
}

impl figment::Provider for EnvVars {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("`REFLEX_` environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut root = Value::from(figment::value::Dict::new());
        for (name, value) in &self.vars {
            let Some(rest) = name.strip_prefix("REFLEX_") else {
                continue;
            };
            if !rest.contains("__") {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", ".");
            if self.skip.iter().any(|s| key.starts_with(&format!("{s}."))) {
                continue;
            }
            let parsed: Value = value.parse().expect("figment's parse is infallible");
            merge_value(&mut root, figment::util::nest(&key, parsed));
        }
        let dict = root.into_dict().expect("built as a dict");
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// `over` merged into `base`, tables recursively, `over` winning elsewhere.
fn merge_value(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Dict(_, base), Value::Dict(_, over)) => {
            for (k, v) in over {
                match base.get_mut(&k) {
                    Some(existing) => merge_value(existing, v),
                    None => {
                        base.insert(k, v);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

/// Loads `T` from the embedded `defaults` (applied in order), the optional `file`, then the
/// environment. The error names the offending key and where its value came from.
pub fn load<T: DeserializeOwned>(defaults: &[&str], file: Option<&Path>) -> Result<T, ConfigError> {
    load_layers(defaults, file, std::env::vars().collect(), &[])
}

/// [`load`] with the environment given, ignoring `REFLEX_<SECTION>__*` variables of the
/// sections in `skip_env`.
fn load_layers<T: DeserializeOwned>(
    defaults: &[&str],
    file: Option<&Path>,
    vars: Vec<(String, String)>,
    skip_env: &'static [&'static str],
) -> Result<T, ConfigError> {
    let mut figment = Figment::new();
    for text in defaults {
        figment = figment.merge(Toml::string(text));
    }
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    figment = figment.merge(EnvVars {
        vars,
        skip: skip_env,
    });
    // Renamed settings first: otherwise they surface as "unknown field", which does not say
    // what the setting is called now.
    if let Ok(all) = figment.extract::<Value>() {
        let origin = |v: &Value, old: &str| -> Option<String> {
            let meta = figment.get_metadata(v.tag())?;
            if !meta.name.contains("environment") {
                return None;
            }
            // `REFLEX_<SECTION>__<FIELD>`, as the provider split it.
            Some(format!(
                "REFLEX_{}",
                old.replace('.', "__").to_ascii_uppercase()
            ))
        };
        let renamed = renamed_settings(&all, &origin);
        if !renamed.is_empty() {
            return Err(ConfigError(renamed.join("; ")));
        }
    }
    figment.extract().map_err(|e| {
        ConfigError(
            e.into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        )
    })
}

/// The librdkafka properties of a Kafka client outside a worker (`reflexctl`), taken as a
/// worker takes them: `REFLEX_KAFKA__PROPERTIES`, then `extra` (command-line flags win), then
/// the same refusal of inline secrets and the same `REFLEX_KAFKA_SECRET_*` resolution from
/// `vars` (pass `std::env::vars()`).
pub fn client_properties(
    extra: impl IntoIterator<Item = (String, String)>,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<KafkaProperties, ConfigError> {
    let vars: Vec<(String, String)> = vars.into_iter().collect();
    let figment = Figment::new().merge(EnvVars {
        vars: vars.clone(),
        skip: &[],
    });
    let mut properties = if figment.contains("kafka.properties") {
        figment
            .extract_inner::<KafkaProperties>("kafka.properties")
            .map_err(|e| ConfigError(e.to_string()))?
    } else {
        KafkaProperties::default()
    };
    properties.extend(extra);
    properties
        .resolve_secrets(
            "kafka properties (REFLEX_KAFKA__PROPERTIES, --kafka-property)",
            vars,
        )
        .map_err(|e| ConfigError(e.to_string()))?;
    Ok(properties)
}

/// A stage's own section of [`WorkerConfig`].
pub trait StageSettings: DeserializeOwned + fmt::Debug + Clone {
    /// Name of the section, e.g. `router` for `[router]` and `REFLEX_ROUTER__*`.
    const SECTION: &'static str;
    /// The stage's embedded defaults: its own section, and overrides of shared ones.
    const DEFAULTS: &'static str;
    /// [`RegistrySettings`] for a stage that talks to the Schema Registry, [`NoRegistry`] for
    /// one that does not (its config then refuses a `[registry]` section).
    type Registry: RegistrySection;
}

/// What a worker's `registry` section is: [`RegistrySettings`] or [`NoRegistry`].
pub trait RegistrySection: DeserializeOwned + fmt::Debug + Clone {
    /// Whether the `[registry]` section is accepted (and required).
    const USED: bool;
    /// The value of a stage that does not use the registry.
    fn unused() -> Option<Self>;
}

impl RegistrySection for RegistrySettings {
    const USED: bool = true;
    fn unused() -> Option<Self> {
        None
    }
}

/// The `registry` of a stage that never asks the Schema Registry anything: a `[registry]`
/// section in its file is refused (it would suggest an effect it does not have), while
/// `REFLEX_REGISTRY__*` variables are ignored so one fleet-wide environment (e.g. a shared
/// ConfigMap) can serve every worker.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoRegistry {}

impl RegistrySection for NoRegistry {
    const USED: bool = false;
    fn unused() -> Option<Self> {
        Some(NoRegistry {})
    }
}

/// One worker's whole configuration: the sections every worker shares, and its own `stage`
/// section under the stage's name ([`StageSettings::SECTION`]). Unknown sections and fields are
/// errors.
#[derive(Debug, Clone)]
pub struct WorkerConfig<S: StageSettings> {
    /// Kafka connection, group and input topics.
    pub kafka: KafkaSettings,
    /// The shared loop's settings.
    pub runtime: RuntimeSettings,
    /// Schema Registry access ([`NoRegistry`] for stages that do not use it).
    pub registry: S::Registry,
    /// Logging.
    pub telemetry: TelemetrySettings,
    /// The stage's own section.
    pub stage: S,
}

impl<S: StageSettings> WorkerConfig<S> {
    /// The sections this worker's configuration accepts, in order.
    pub fn sections() -> Vec<&'static str> {
        let mut all = vec!["kafka", "runtime"];
        if S::Registry::USED {
            all.push("registry");
        }
        all.extend(["telemetry", S::SECTION]);
        all
    }

    /// Loads the layered configuration (defaults, `file`, `REFLEX_` environment), checks the
    /// Kafka settings ([`crate::client_config::consumer_config`]) and resolves the Kafka
    /// secrets from the environment into `kafka.properties`
    /// ([`KafkaSettings::resolve_secrets`]): what every worker needs before it starts.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with(file, std::env::vars())
    }

    /// [`Self::load`] with the environment given: `REFLEX_<SECTION>__<FIELD>` settings and
    /// `REFLEX_KAFKA_SECRET_*` secrets both come from `vars` (tests, and checks of rendered
    /// manifests, pass their own).
    pub fn load_with(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        let defaults: &[&str] = if S::Registry::USED {
            &[RUNTIME_DEFAULTS, REGISTRY_DEFAULTS, S::DEFAULTS]
        } else {
            &[RUNTIME_DEFAULTS, S::DEFAULTS]
        };
        let skip: &'static [&'static str] = if S::Registry::USED {
            &[]
        } else {
            &["registry"]
        };
        let mut config: Self = load_layers(defaults, file, vars.clone(), skip)?;
        crate::client_config::consumer_config(&config.kafka, "check")
            .map_err(|e| ConfigError(e.to_string()))?;
        config
            .kafka
            .resolve_secrets(vars)
            .map_err(|e| ConfigError(e.to_string()))?;
        Ok(config)
    }
}

impl<'de, S: StageSettings> Deserialize<'de> for WorkerConfig<S> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Sections<S>(PhantomData<S>);

        impl<'de, S: StageSettings> Visitor<'de> for Sections<S> {
            type Value = WorkerConfig<S>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "the sections {}",
                    WorkerConfig::<S>::sections().join(", ")
                )
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let (mut kafka, mut runtime, mut registry, mut telemetry, mut stage) =
                    (None, None, None, None, None);
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "kafka" => kafka = Some(map.next_value()?),
                        "runtime" => runtime = Some(map.next_value()?),
                        "registry" if S::Registry::USED => registry = Some(map.next_value()?),
                        "telemetry" => telemetry = Some(map.next_value()?),
                        k if k == S::SECTION => stage = Some(map.next_value()?),
                        other => {
                            let why = if other == "registry" {
                                format!(" (the {} never uses the schema registry)", S::SECTION)
                            } else {
                                String::new()
                            };
                            return Err(de::Error::custom(format!(
                                "unknown section `{other}`{why}: expected {}",
                                WorkerConfig::<S>::sections().join(", ")
                            )));
                        }
                    }
                }
                let registry = match registry.or_else(S::Registry::unused) {
                    Some(r) => r,
                    None => return Err(de::Error::missing_field("registry")),
                };
                Ok(WorkerConfig {
                    kafka: kafka.ok_or_else(|| de::Error::missing_field("kafka"))?,
                    runtime: runtime.ok_or_else(|| de::Error::missing_field("runtime"))?,
                    registry,
                    telemetry: telemetry.ok_or_else(|| de::Error::missing_field("telemetry"))?,
                    stage: stage.ok_or_else(|| de::Error::missing_field(S::SECTION))?,
                })
            }
        }

        deserializer.deserialize_map(Sections(PhantomData))
    }
}

/// librdkafka properties (`kafka.properties` and friends). `Debug` shows the values of secret
/// properties ([`KAFKA_SECRET_PROPERTIES`]) as `<redacted>`, so a logged config never shows
/// a password resolved into it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl std::ops::Deref for KafkaProperties {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KafkaProperties {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl<'a> IntoIterator for &'a KafkaProperties {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if KAFKA_SECRET_PROPERTIES.contains(&k.as_str()) {
                    "<redacted>"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// Why Kafka secrets cannot be resolved. Messages name settings and variables, never values.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum KafkaSecretError {
    #[error("{setting} sets the secret `{property}` inline: remove it and set {var} (the value) or {var}_FILE (a file holding it, e.g. a mounted Kubernetes or Docker secret)")]
    Inline {
        setting: String,
        property: String,
        var: String,
    },
    #[error("{var} and {var}_FILE are both set: keep one")]
    Twice { var: String },
    #[error(transparent)]
    Secret(#[from] reflex_core::secrets::SecretError),
}

impl KafkaProperties {
    /// Refuses secret properties written here inline (`setting` names this map in the
    /// message), then adds the ones the environment gives: `REFLEX_KAFKA_SECRET_<PROPERTY>`
    /// (the value) or `REFLEX_KAFKA_SECRET_<PROPERTY>_FILE` (a file holding it). Workers and
    /// `reflexctl` both resolve their secrets here, once, at start.
    pub fn resolve_secrets(
        &mut self,
        setting: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), KafkaSecretError> {
        self.refuse_inline(setting)?;
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(name, _)| name.starts_with(KAFKA_SECRET_ENV_PREFIX))
            .collect();
        for (name, _) in &vars {
            if let Some(base) = name.strip_suffix("_FILE") {
                if vars.iter().any(|(other, _)| other == base) {
                    return Err(KafkaSecretError::Twice {
                        var: base.to_string(),
                    });
                }
            }
        }
        for (property, secret) in kafka_secret_properties(vars)? {
            let value = secret.expose_str().ok_or_else(|| {
                reflex_core::secrets::SecretError::Syntax(format!("{property}: not UTF-8"))
            })?;
            self.0.insert(property, value.to_string());
        }
        Ok(())
    }

    /// An error for the first secret property written here inline.
    pub fn refuse_inline(&self, setting: &str) -> Result<(), KafkaSecretError> {
        match self
            .0
            .keys()
            .find(|k| KAFKA_SECRET_PROPERTIES.contains(&k.as_str()))
        {
            Some(property) => Err(KafkaSecretError::Inline {
                setting: setting.to_string(),
                property: property.clone(),
                var: format!(
                    "{KAFKA_SECRET_ENV_PREFIX}{}",
                    property.to_ascii_uppercase().replace('.', "_")
                ),
            }),
            None => Ok(()),
        }
    }
}

/// Kafka connection and consumer-group settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list of brokers.
    pub bootstrap_servers: String,
    /// Consumer group. Replicas with the same group share the input partitions.
    pub group_id: String,
    /// Static group membership (KIP-345): a stable id per replica (e.g. the StatefulSet pod name)
    /// lets a restarted replica take its partitions back at once, without a rebalance. Empty
    /// means dynamic membership. A static member does not leave the group on shutdown, so its
    /// partitions wait for `session_timeout` unless it comes back.
    pub group_instance_id: String,
    /// Topics this worker consumes.
    pub input_topics: Vec<String>,
    /// Consumer-group protocol: `classic` (the default; the client runs the assignment and
    /// chooses the session timeout) or `consumer` (KIP-848, Kafka 4.0+: the broker assigns
    /// partitions incrementally and owns the session timeout, `group.consumer.session.timeout.ms`
    /// on the broker). With `consumer`, `session_timeout` and `assignment_strategy` must stay
    /// unset: the worker refuses to start otherwise.
    pub group_protocol: GroupProtocol,
    /// Classic protocol only: librdkafka's `partition.assignment.strategy`. Unset means
    /// `cooperative-sticky` (a rebalance moves only the partitions that change owner); `range`
    /// and `roundrobin` are eager (every member gives up everything on each rebalance).
    pub assignment_strategy: Option<AssignmentStrategy>,
    /// Where a group without a committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: AutoOffsetReset,
    /// Classic protocol only: the group session timeout; a member silent this long is removed
    /// and its partitions reassigned. Unset means 45s.
    #[serde(default, deserialize_with = "duration::deserialize_option")]
    pub session_timeout: Option<Duration>,
    /// Longest gap between polls before the member is considered stuck.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max_poll_interval: Duration,
    /// How often stored (safe) offsets are committed.
    #[serde(deserialize_with = "duration::deserialize")]
    pub commit_interval: Duration,
    /// Upper bound of librdkafka's prefetch queue (`queued.max.messages.kbytes`): part of the
    /// memory bound together with `runtime.max_in_flight`.
    pub fetch_queue_kbytes: u32,
    /// Extra librdkafka properties for consumer and producer (e.g. `security.protocol`,
    /// `sasl.mechanism`). Secret ones (`sasl.password`, `ssl.key.password`, ...) are refused
    /// here: they come from `REFLEX_KAFKA_SECRET_<PROPERTY>` or `..._FILE` variables, resolved
    /// into this map at start ([`KafkaSettings::resolve_secrets`]).
    pub properties: KafkaProperties,
    /// Extra librdkafka properties for the consumer only (no secrets either).
    pub consumer_properties: KafkaProperties,
    /// Extra librdkafka properties for the producer only (no secrets either).
    pub producer_properties: KafkaProperties,
}

impl KafkaSettings {
    /// Refuses secrets written inline in any of the property maps, then resolves the
    /// `REFLEX_KAFKA_SECRET_*` variables in `vars` (pass `std::env::vars()`) into
    /// `properties`. [`WorkerConfig::load`] calls it once for every worker.
    pub fn resolve_secrets(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), KafkaSecretError> {
        self.consumer_properties
            .refuse_inline("kafka.consumer_properties")?;
        self.producer_properties
            .refuse_inline("kafka.producer_properties")?;
        self.properties.resolve_secrets("kafka.properties", vars)
    }
}

/// Where a group without a committed offset starts (`kafka.auto_offset_reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AutoOffsetReset {
    /// The oldest retained record.
    Earliest,
    /// Only records written after the group joined.
    Latest,
}

impl AutoOffsetReset {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Earliest => "earliest",
            Self::Latest => "latest",
        }
    }
}

/// Consumer-group protocol (`kafka.group_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    /// The classic group protocol: client-side assignment, client-chosen session timeout.
    Classic,
    /// KIP-848: the broker runs the assignment and owns the session timeout.
    Consumer,
}

/// Partition assignment of the classic protocol (`kafka.assignment_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AssignmentStrategy {
    /// Incremental: only partitions that change owner move.
    CooperativeSticky,
    /// Eager, contiguous ranges per topic.
    Range,
    /// Eager, round robin over all partitions.
    Roundrobin,
}

impl AssignmentStrategy {
    /// librdkafka's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CooperativeSticky => "cooperative-sticky",
            Self::Range => "range",
            Self::Roundrobin => "roundrobin",
        }
    }
}

/// Settings of the shared loop.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Most events in flight before the consumer pauses its partitions (backpressure).
    pub max_in_flight: usize,
    /// Concurrent key lanes; events with the same key always share a lane, so stay in order.
    pub key_lanes: usize,
    /// Most events a lane hands the stage at once ([`crate::Stage::process_batch`]): those
    /// already queued in the lane, at most one per key, so a stage can share one Redis round
    /// trip among them. Never waits to fill a batch; 1 turns batching off.
    pub batch_max: usize,
    /// On SIGTERM, how long in-flight events may take to finish. Keep below the session timeout.
    #[serde(deserialize_with = "duration::deserialize")]
    pub drain_grace: Duration,
    /// Attempts for retryable errors before the event is dead-lettered (1 = no retry).
    pub max_attempts: u32,
    /// First retry backoff; doubles each attempt, with jitter.
    #[serde(deserialize_with = "duration::deserialize")]
    pub retry_backoff: Duration,
    /// Longest retry backoff.
    #[serde(deserialize_with = "duration::deserialize")]
    pub retry_max_backoff: Duration,
    /// In-process retries of one event stop once this much time has passed since its first
    /// failure, even with attempts left, so one slow event does not stall its key lane.
    #[serde(deserialize_with = "duration::deserialize")]
    pub retry_deadline: Duration,
    /// After in-process retries, a retryable failure is not retried in place: the event goes to
    /// the dead-letter topic with a not-before time and the reprocessor delivers it again (a
    /// non-blocking retry). The delay is this, doubled per redelivery attempt.
    #[serde(deserialize_with = "duration::deserialize")]
    pub redelivery_backoff: Duration,
    /// Longest delay before a redelivery.
    #[serde(deserialize_with = "duration::deserialize")]
    pub redelivery_max_backoff: Duration,
    /// Per-key parking: while an event waits for redelivery, later events with its key are
    /// parked behind it (to the dead-letter topic, then redelivered in order) so per-key order
    /// survives non-blocking retries. Needs the reprocessor running on the dead-letter topics.
    pub park_keys: bool,
    /// Redis URL (`redis://`, `rediss://`, with credentials from the environment) for the
    /// runtime's state (parked keys). Empty: in-process state, lost on restart; fine for one
    /// replica, not for several.
    pub state_url: String,
    /// Dead-letter topic of an input topic is `<topic><suffix>`.
    pub dead_letter_suffix: String,
    /// Also write the dead-letter header names other tools read: any of `spring` (Spring
    /// Kafka `kafka_dlt-*`), `connect` (Kafka Connect `__connect.errors.*`), `streams`
    /// (Kafka Streams `__streams.errors.*`). Reflex's own `reflex-*` headers are always written.
    pub dead_letter_compat: Vec<CompatDialect>,
    /// Name of this replica in dead-letter headers and logs; empty means `<stage>-<pid>`.
    pub worker_id: String,
    /// Address of `/metrics`, `/healthz` and `/readyz` (e.g. `0.0.0.0:9090` in a pod; port 0
    /// picks a free port, logged at start). Empty disables the endpoint.
    pub http_listen: String,
    /// How often the worker measures its own group's lag (offsets and seconds) for `/metrics`;
    /// `"0"` turns it off.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lag_interval: Duration,
    /// Lag samples in the Burrow-style status window.
    pub lag_window: usize,
    /// Lag > 0 and no commit moved this long: status STALL.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lag_stall_after: Duration,
    /// Lag > 0 and no commit moved this long: status STOP.
    #[serde(deserialize_with = "duration::deserialize")]
    pub lag_stop_after: Duration,
}

/// Another tool's dead-letter header names (`runtime.dead_letter_compat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompatDialect {
    /// Spring Kafka's `kafka_dlt-*`.
    Spring,
    /// Kafka Connect's `__connect.errors.*`.
    Connect,
    /// Kafka Streams' `__streams.errors.*`.
    Streams,
}

impl CompatDialect {
    /// The dialect as the dead-letter code knows it.
    pub fn dialect(self) -> reflex_core::dead_letter::Dialect {
        use reflex_core::dead_letter::Dialect;
        match self {
            Self::Spring => Dialect::Spring,
            Self::Connect => Dialect::Connect,
            Self::Streams => Dialect::Streams,
        }
    }
}

/// Schema Registry access.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Base URL of a Confluent-compatible registry.
    pub url: String,
    /// Timeout of one registry request.
    #[serde(deserialize_with = "duration::deserialize")]
    pub timeout: Duration,
    /// How long an unknown schema id is remembered as unknown before asking again.
    #[serde(deserialize_with = "duration::deserialize")]
    pub negative_cache: Duration,
}

impl RegistrySettings {
    /// A client with these settings.
    pub fn client(&self) -> reflex_core::registry::RegistryClient {
        reflex_core::registry::RegistryClient::new(&self.url, self.timeout, self.negative_cache)
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// `json` (one object per line) or `text`.
    pub log_format: LogFormat,
    /// Default level: `trace`, `debug`, `info`, `warn`, `error` or `off`. `RUST_LOG` overrides
    /// it (and takes per-module directives).
    pub log_level: LogLevel,
}

/// Log line format (`telemetry.log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// Default log level (`telemetry.log_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Problems that did not stop the worker.
    Warn,
    /// Failures only.
    Error,
    /// Nothing.
    Off,
}

impl LogLevel {
    /// The `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Off => "off",
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature, not ours
mod tests {
    use super::*;

    /// A stage section as a worker declares one.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        /// A stage duration.
        #[serde(deserialize_with = "duration::deserialize")]
        wait: Duration,
    }

    impl StageSettings for Sample {
        const SECTION: &'static str = "sample";
        const DEFAULTS: &'static str = "[sample]\nwait = \"1s\"\n";
        type Registry = RegistrySettings;
    }

    /// A stage that never uses the registry.
    #[derive(Debug, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Quiet {
        /// Anything.
        n: u32,
    }

    impl StageSettings for Quiet {
        const SECTION: &'static str = "quiet";
        const DEFAULTS: &'static str = "[quiet]\nn = 1\n";
        type Registry = NoRegistry;
    }

    fn load_file<S: StageSettings>(
        jail: &mut figment::Jail,
        text: &str,
        vars: Vec<(&str, &str)>,
    ) -> Result<WorkerConfig<S>, String> {
        jail.create_file("w.toml", text).unwrap();
        let vars = vars
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()));
        WorkerConfig::<S>::load_with(Some(Path::new("w.toml")), vars).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_then_file_then_env() {
        figment::Jail::expect_with(|jail| {
            let s: WorkerConfig<Sample> = load_file(
                jail,
                "[kafka]\ngroup_id = \"from-file\"\ninput_topics = [\"a\"]\ncommit_interval = \"5s\"\n",
                vec![
                    ("REFLEX_RUNTIME__MAX_IN_FLIGHT", "7"),
                    ("REFLEX_RUNTIME__DRAIN_GRACE", "250ms"),
                    ("REFLEX_KAFKA__PROPERTIES", "{\"client.rack\"=\"r1\"}"),
                    ("REFLEX_TEST_BOOTSTRAP", "ignored: no section separator"),
                ],
            )
            .unwrap();
            assert_eq!(s.kafka.group_id, "from-file");
            assert_eq!(s.kafka.input_topics, vec!["a"]);
            assert_eq!(s.kafka.commit_interval, Duration::from_secs(5));
            assert_eq!(s.kafka.max_poll_interval, Duration::from_secs(300));
            assert_eq!(s.runtime.max_in_flight, 7);
            assert_eq!(s.runtime.drain_grace, Duration::from_millis(250));
            assert_eq!(s.runtime.lag_stop_after, Duration::from_secs(300));
            assert_eq!(s.registry.url, "http://127.0.0.1:8081");
            assert_eq!(s.registry.timeout, Duration::from_secs(5));
            assert_eq!(s.telemetry.log_format, LogFormat::Json);
            assert_eq!(s.telemetry.log_level, LogLevel::Info);
            assert_eq!(s.stage.wait, Duration::from_secs(1));
            assert_eq!(
                s.kafka.properties.get("client.rack").map(String::as_str),
                Some("r1")
            );
            Ok(())
        });
    }

    #[test]
    fn unknown_fields_sections_and_missing_files_are_errors() {
        figment::Jail::expect_with(|jail| {
            let err = load_file::<Sample>(jail, "[kafka]\ngroup = \"typo\"\n", vec![]).unwrap_err();
            assert!(err.contains("group") && err.contains("w.toml"), "{err}");
            let err = load_file::<Sample>(jail, "[router]\nmax_hops = 1\n", vec![]).unwrap_err();
            assert!(
                err.contains("unknown section `router`")
                    && err.contains("kafka, runtime, registry, telemetry, sample"),
                "{err}"
            );
            let err = WorkerConfig::<Sample>::load_with(Some(Path::new("nope.toml")), vec![])
                .unwrap_err()
                .to_string();
            assert!(err.contains("nope.toml"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_stage_without_the_registry_refuses_its_section_but_not_the_fleet_env() {
        figment::Jail::expect_with(|jail| {
            // A shared ConfigMap sets this for every worker.
            let fleet = vec![("REFLEX_REGISTRY__URL", "http://registry:8081")];
            let q: WorkerConfig<Quiet> = load_file(jail, "[quiet]\nn = 2\n", fleet).unwrap();
            assert_eq!(q.stage.n, 2);
            let err =
                load_file::<Quiet>(jail, "[registry]\nurl = \"http://x\"\n", vec![]).unwrap_err();
            assert!(
                err.contains("unknown section `registry`")
                    && err.contains("never uses the schema registry")
                    && err.contains("kafka, runtime, telemetry, quiet"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn durations_need_a_unit() {
        figment::Jail::expect_with(|jail| {
            let err =
                load_file::<Sample>(jail, "[runtime]\ndrain_grace = 10000\n", vec![]).unwrap_err();
            assert!(
                err.contains("drain_grace")
                    && err.contains("has no unit")
                    && err.contains("\"10s\""),
                "{err}"
            );
            let err = load_file::<Sample>(jail, "[runtime]\ndrain_grace = \"10 secs\"\n", vec![])
                .unwrap_err();
            assert!(err.contains("not a duration"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn renamed_settings_say_what_to_write_for_files_and_env() {
        figment::Jail::expect_with(|jail| {
            let err = load_file::<Sample>(
                jail,
                "[runtime]\ndrain_grace_ms = 10000\n[kafka]\ncommit_interval_ms = 250\n",
                vec![],
            )
            .unwrap_err();
            assert!(
                err.contains(
                    "runtime.drain_grace_ms was renamed: write drain_grace = \"10s\" (a duration with a unit)"
                ),
                "{err}"
            );
            assert!(
                err.contains(
                    "kafka.commit_interval_ms was renamed: write commit_interval = \"250ms\""
                ),
                "{err}"
            );
            let err =
                load_file::<Sample>(jail, "", vec![("REFLEX_RUNTIME__LAG_INTERVAL_MS", "15000")])
                    .unwrap_err();
            assert!(
                err.contains(
                    "REFLEX_RUNTIME__LAG_INTERVAL_MS was renamed: set REFLEX_RUNTIME__LAG_INTERVAL=15s"
                ),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn renamed_settings_inside_arrays_of_tables_are_found() {
        let value: Value = Figment::from(Toml::string(
            "[[actor.action]]\nname = \"a\"\ntimeout_ms = 2000\n[[lookup]]\nttl_ms = 60000\n",
        ))
        .extract()
        .unwrap();
        let found = renamed_settings(&value, &|_, _| None);
        assert_eq!(
            found,
            vec![
                "actor.action[].timeout_ms was renamed: write timeout = \"2s\" (a duration with a unit)",
                "lookup[].ttl_ms was renamed: write ttl = \"1m\" (a duration with a unit)",
            ]
        );
    }

    #[test]
    fn enum_typos_list_the_accepted_values() {
        figment::Jail::expect_with(|jail| {
            for (text, accepted) in [
                ("[telemetry]\nlog_format = \"jsno\"", "`json`, `text`"),
                (
                    "[telemetry]\nlog_level = \"verbose\"",
                    "`trace`, `debug`, `info`, `warn`, `error`, `off`",
                ),
                (
                    "[kafka]\nauto_offset_reset = \"begin\"",
                    "`earliest`, `latest`",
                ),
                (
                    "[runtime]\ndead_letter_compat = [\"sprng\"]",
                    "`spring`, `connect`, `streams`",
                ),
            ] {
                let err = load_file::<Sample>(jail, text, vec![]).unwrap_err();
                let accepted_alt = accepted.replace("`, `", "` or `");
                assert!(
                    err.contains(accepted) || err.contains(&accepted_alt),
                    "{text}: {err}"
                );
            }
            Ok(())
        });
    }

    #[test]
    fn contradicting_kafka_settings_fail_the_load() {
        figment::Jail::expect_with(|jail| {
            let err = load_file::<Sample>(
                jail,
                "[kafka]\ngroup_protocol = \"consumer\"\nsession_timeout = \"6s\"\n",
                vec![],
            )
            .unwrap_err();
            assert!(err.contains("kafka.session_timeout"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn kafka_secrets_resolve_from_env_and_from_files() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("oauth-secret", "from-a-file\n")?;
            let file = jail.directory().join("oauth-secret");
            let s: WorkerConfig<Sample> = load_file(
                jail,
                "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n",
                vec![
                    ("REFLEX_KAFKA_SECRET_SASL_PASSWORD", "hunter2"),
                    (
                        "REFLEX_KAFKA_SECRET_SASL_OAUTHBEARER_CLIENT_SECRET_FILE",
                        file.to_str().unwrap(),
                    ),
                    ("PATH", "/bin"),
                ],
            )
            .unwrap();
            let p = &s.kafka.properties;
            assert_eq!(p.get("sasl.password").map(String::as_str), Some("hunter2"));
            assert_eq!(
                p.get("sasl.oauthbearer.client.secret").map(String::as_str),
                Some("from-a-file")
            );
            assert_eq!(
                p.get("security.protocol").map(String::as_str),
                Some("SASL_SSL")
            );
            // What a log line or a panic message would show.
            let shown = format!("{s:?} {:?}", s.kafka);
            assert!(
                !shown.contains("hunter2") && !shown.contains("from-a-file"),
                "{shown}"
            );
            assert!(shown.contains("SASL_SSL"), "{shown}");
            Ok(())
        });
    }

    #[test]
    fn tools_take_kafka_properties_and_secrets_as_workers_do() {
        let vars = |extra: &[(&str, &str)]| -> Vec<(String, String)> {
            extra
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let p = client_properties(
            vec![("sasl.mechanism".to_string(), "PLAIN".to_string())],
            vars(&[
                (
                    "REFLEX_KAFKA__PROPERTIES",
                    "{\"security.protocol\"=\"SASL_SSL\"}",
                ),
                ("REFLEX_KAFKA_SECRET_SASL_PASSWORD", "hunter2"),
            ]),
        )
        .unwrap();
        assert_eq!(
            p.get("security.protocol").map(String::as_str),
            Some("SASL_SSL")
        );
        assert_eq!(p.get("sasl.mechanism").map(String::as_str), Some("PLAIN"));
        assert_eq!(p.get("sasl.password").map(String::as_str), Some("hunter2"));
        assert!(!format!("{p:?}").contains("hunter2"));
        let err = client_properties(
            vec![("sasl.password".to_string(), "hunter2".to_string())],
            Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`sasl.password` inline")
                && err.contains("REFLEX_KAFKA_SECRET_SASL_PASSWORD"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn inline_or_doubly_given_kafka_secrets_are_refused_without_their_value() {
        figment::Jail::expect_with(|jail| {
            for section in ["properties", "consumer_properties", "producer_properties"] {
                let err = load_file::<Sample>(
                    jail,
                    &format!("[kafka.{section}]\n\"ssl.key.password\" = \"hunter2\"\n"),
                    vec![],
                )
                .unwrap_err();
                assert!(
                    err.contains(&format!(
                        "kafka.{section} sets the secret `ssl.key.password` inline"
                    )) && err.contains("REFLEX_KAFKA_SECRET_SSL_KEY_PASSWORD_FILE"),
                    "{err}"
                );
                assert!(!err.contains("hunter2"), "{err}");
            }
            let err = load_file::<Sample>(
                jail,
                "",
                vec![
                    ("REFLEX_KAFKA_SECRET_SASL_PASSWORD", "hunter2"),
                    ("REFLEX_KAFKA_SECRET_SASL_PASSWORD_FILE", "/run/secrets/x"),
                ],
            )
            .unwrap_err();
            assert!(err.contains("both set"), "{err}");
            let err = load_file::<Sample>(
                jail,
                "",
                vec![("REFLEX_KAFKA_SECRET_SASL_PASSWORD_FILE", "/nonexistent/pw")],
            )
            .unwrap_err();
            assert!(err.contains("/nonexistent/pw"), "{err}");
            let err = load_file::<Sample>(
                jail,
                "",
                vec![("REFLEX_KAFKA_SECRET_SASL_PASWORD", "hunter2")],
            )
            .unwrap_err();
            assert!(
                err.contains("sasl.pasword") && !err.contains("hunter2"),
                "{err}"
            );
            Ok(())
        });
    }
}
