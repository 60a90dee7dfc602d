//! `reflexctl acls apply|check FILE`: the least-privilege Kafka ACLs of Reflex's principals,
//! declared in a file (`ops/security/kafka-acls.toml`), made true on the cluster or checked.
//!
//! The file owns the principals it lists: `apply` adds the bindings they lack and removes every
//! other binding of those principals (a right nobody declared is a right too many); principals
//! the file does not name are never touched. `check` changes nothing and exits 1 when the
//! cluster differs. Both print the difference as `+`/`-` lines.
//!
//! rust-rdkafka has no ACL API, so the admin calls go to librdkafka's C API
//! (`rd_kafka_CreateAcls`, `DescribeAcls`, `DeleteAcls`) through its own result queue.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::c_char;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::ptr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rdkafka::admin::AdminClient;
use rdkafka::bindings as rd;
use rdkafka::client::DefaultClientContext;
use serde::Deserialize;

use crate::{check_failed, Global};

pub const LONG_ABOUT: &str = "Least-privilege Kafka ACLs per Reflex principal, from a file.\n\n\
The file (default ops/security/kafka-acls.toml) lists each worker's principal, its consumer \
groups and the topics it reads and writes. `apply` creates the missing bindings and deletes \
every other binding of the principals it lists; `check` only compares (exit 1 on a \
difference). Both need an admin principal allowed to describe and alter the cluster's ACLs.\n\n\
Examples:\n  reflexctl acls check\n  reflexctl acls apply --dry-run\n  \
reflexctl acls apply ops/security/kafka-acls.toml";

#[derive(Debug, Subcommand)]
pub enum AclsCommand {
    /// Create the declared bindings and delete the listed principals' undeclared ones.
    Apply(AclsArgs),
    /// Compare the cluster with the file; exit 1 when they differ.
    Check(AclsArgs),
}

#[derive(Debug, Args)]
pub struct AclsArgs {
    /// The ACL declaration file.
    #[arg(default_value = "ops/security/kafka-acls.toml")]
    pub file: PathBuf,
    /// With `apply`: print the changes without making them.
    #[arg(long)]
    pub dry_run: bool,
}

/// The declaration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclFile {
    pub worker: Vec<WorkerAcls>,
}

/// One principal's rights.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerAcls {
    /// A name for people (e.g. `router`).
    pub name: String,
    /// Kafka principal, e.g. `User:reflex-router`.
    pub principal: String,
    /// Consumer groups and what the principal may do with them.
    #[serde(default)]
    pub groups: Vec<GroupAcl>,
    /// Topics it consumes: Read and Describe.
    #[serde(default)]
    pub read: Vec<String>,
    /// Topics it produces to: Write and Describe.
    #[serde(default)]
    pub write: Vec<String>,
    /// Topics it only looks at (watermarks, metadata): Describe.
    #[serde(default)]
    pub describe: Vec<String>,
}

/// A consumer group (or group prefix) and the operations allowed on it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupAcl {
    pub name: String,
    #[serde(default)]
    pub pattern: Pattern,
    pub operations: Vec<Operation>,
}

/// How a resource name matches.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    #[default]
    Literal,
    Prefixed,
}

/// The operations Reflex's principals need (Kafka's names).
#[derive(Debug, Clone, Copy, Deserialize)]
pub enum Operation {
    Read,
    Write,
    Describe,
}

impl Operation {
    fn code(self) -> rd::rd_kafka_AclOperation_t {
        match self {
            Self::Read => rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_READ,
            Self::Write => rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_WRITE,
            Self::Describe => rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_DESCRIBE,
        }
    }
}

/// One ACL binding, as librdkafka names its parts (codes kept raw so bindings the file cannot
/// express, such as a Deny or an `All` operation, still compare and print).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    pub principal: String,
    pub resource: i32,
    pub name: String,
    pub pattern: i32,
    pub operation: i32,
    pub permission: i32,
    pub host: String,
}

impl Binding {
    fn allow(
        principal: &str,
        resource: rd::rd_kafka_ResourceType_t,
        name: &str,
        pattern: Pattern,
        operation: Operation,
    ) -> Self {
        Self {
            principal: principal.to_string(),
            resource: resource as i32,
            name: name.to_string(),
            pattern: match pattern {
                Pattern::Literal => {
                    rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_LITERAL as i32
                }
                Pattern::Prefixed => {
                    rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED as i32
                }
            },
            operation: operation.code() as i32,
            permission: rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW as i32,
            host: "*".to_string(),
        }
    }
}

impl fmt::Display for Binding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resource = match self.resource {
            r if r == rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC as i32 => "topic",
            r if r == rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_GROUP as i32 => "group",
            r if r == rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_BROKER as i32 => "cluster",
            r if r == rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID as i32 => {
                "transactional-id"
            }
            _ => "resource",
        };
        let prefixed = self.pattern
            == rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_PREFIXED as i32;
        // SAFETY: librdkafka's name functions return static strings.
        let (operation, permission) = unsafe {
            (
                cstr(rd::rd_kafka_AclOperation_name(operation_code(
                    self.operation,
                ))),
                cstr(rd::rd_kafka_AclPermissionType_name(permission_code(
                    self.permission,
                ))),
            )
        };
        write!(
            f,
            "{} {permission} {operation} on {resource} {}{}",
            self.principal,
            self.name,
            if prefixed { "*" } else { "" }
        )?;
        if self.host != "*" {
            write!(f, " from {}", self.host)?;
        }
        Ok(())
    }
}

impl AclFile {
    /// Reads and checks a declaration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the ACL file {}", path.display()))?;
        let file: AclFile = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid ACL file", path.display()))?;
        let mut principals = BTreeSet::new();
        for worker in &file.worker {
            if !worker.principal.contains(':') {
                bail!(
                    "{}: worker {}: principal `{}` needs a type, e.g. User:{}",
                    path.display(),
                    worker.name,
                    worker.principal,
                    worker.principal
                );
            }
            if !principals.insert(&worker.principal) {
                bail!(
                    "{}: principal {} is listed twice",
                    path.display(),
                    worker.principal
                );
            }
        }
        Ok(file)
    }

    /// Every binding the file declares.
    pub fn bindings(&self) -> BTreeSet<Binding> {
        use rd::rd_kafka_ResourceType_t::{
            RD_KAFKA_RESOURCE_GROUP as GROUP, RD_KAFKA_RESOURCE_TOPIC as TOPIC,
        };
        let mut out = BTreeSet::new();
        for w in &self.worker {
            let p = w.principal.as_str();
            for g in &w.groups {
                for op in &g.operations {
                    out.insert(Binding::allow(p, GROUP, &g.name, g.pattern, *op));
                }
            }
            for topic in &w.read {
                out.insert(Binding::allow(
                    p,
                    TOPIC,
                    topic,
                    Pattern::Literal,
                    Operation::Read,
                ));
                out.insert(Binding::allow(
                    p,
                    TOPIC,
                    topic,
                    Pattern::Literal,
                    Operation::Describe,
                ));
            }
            for topic in &w.write {
                out.insert(Binding::allow(
                    p,
                    TOPIC,
                    topic,
                    Pattern::Literal,
                    Operation::Write,
                ));
                out.insert(Binding::allow(
                    p,
                    TOPIC,
                    topic,
                    Pattern::Literal,
                    Operation::Describe,
                ));
            }
            for topic in &w.describe {
                out.insert(Binding::allow(
                    p,
                    TOPIC,
                    topic,
                    Pattern::Literal,
                    Operation::Describe,
                ));
            }
        }
        out
    }

    pub fn principals(&self) -> impl Iterator<Item = &str> {
        self.worker.iter().map(|w| w.principal.as_str())
    }
}

/// What `apply` would change.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub add: Vec<Binding>,
    pub remove: Vec<Binding>,
}

impl Plan {
    pub fn new(wanted: &BTreeSet<Binding>, current: &BTreeSet<Binding>) -> Self {
        Self {
            add: wanted.difference(current).cloned().collect(),
            remove: current.difference(wanted).cloned().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }

    fn print(&self) {
        for b in &self.add {
            println!("+ {b}");
        }
        for b in &self.remove {
            println!("- {b}");
        }
    }
}

pub async fn run(global: &Global, command: AclsCommand) -> anyhow::Result<ExitCode> {
    let (args, apply) = match command {
        AclsCommand::Apply(args) => (args, true),
        AclsCommand::Check(args) => (args, false),
    };
    let file = AclFile::load(&args.file)?;
    let config = global.kafka_config();
    tokio::task::spawn_blocking(move || -> anyhow::Result<ExitCode> {
        let admin = Acls::connect(&config)?;
        let mut current = BTreeSet::new();
        for principal in file.principals() {
            current.extend(admin.describe(principal)?);
        }
        let plan = Plan::new(&file.bindings(), &current);
        plan.print();
        if plan.is_empty() {
            println!("ACLs match {}", args.file.display());
            return Ok(ExitCode::SUCCESS);
        }
        if !apply {
            println!(
                "ACLs differ from {}: {} to add, {} to remove (reflexctl acls apply)",
                args.file.display(),
                plan.add.len(),
                plan.remove.len()
            );
            return Ok(check_failed());
        }
        if args.dry_run {
            println!("dry run: nothing changed");
            return Ok(ExitCode::SUCCESS);
        }
        admin.create(&plan.add)?;
        admin.delete(&plan.remove)?;
        println!(
            "applied: {} added, {} removed",
            plan.add.len(),
            plan.remove.len()
        );
        Ok(ExitCode::SUCCESS)
    })
    .await?
}

/// How long one admin request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An admin client for ACL requests.
pub struct Acls {
    client: AdminClient<DefaultClientContext>,
}

impl Acls {
    pub fn connect(config: &rdkafka::ClientConfig) -> anyhow::Result<Self> {
        let client = config.create().context(
            "cannot create a Kafka admin client (check --bootstrap and the Kafka settings)",
        )?;
        Ok(Self { client })
    }

    /// Every binding of `principal`.
    pub fn describe(&self, principal: &str) -> anyhow::Result<Vec<Binding>> {
        use rd::rd_kafka_AclOperation_t::RD_KAFKA_ACL_OPERATION_ANY;
        use rd::rd_kafka_AclPermissionType_t::RD_KAFKA_ACL_PERMISSION_TYPE_ANY;
        use rd::rd_kafka_ResourcePatternType_t::RD_KAFKA_RESOURCE_PATTERN_ANY;
        use rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_ANY;
        let principal_c = CString::new(principal)?;
        let mut errstr = [0 as c_char; 512];
        // SAFETY: every pointer handed to librdkafka is valid for the call; the filter is
        // destroyed after the request (DescribeAcls copies it), the event after reading it.
        unsafe {
            let filter = rd::rd_kafka_AclBindingFilter_new(
                RD_KAFKA_RESOURCE_ANY,
                ptr::null(),
                RD_KAFKA_RESOURCE_PATTERN_ANY,
                principal_c.as_ptr(),
                ptr::null(),
                RD_KAFKA_ACL_OPERATION_ANY,
                RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            if filter.is_null() {
                bail!(
                    "invalid ACL filter for {principal}: {}",
                    cstr(errstr.as_ptr())
                );
            }
            let event = self.request(|rk, options, queue| {
                rd::rd_kafka_DescribeAcls(rk, filter, options, queue)
            });
            rd::rd_kafka_AclBinding_destroy(filter);
            let event =
                event.with_context(|| format!("cannot describe the ACLs of {principal}"))?;
            let result = rd::rd_kafka_event_DescribeAcls_result(event.0);
            let mut count = 0;
            let acls = rd::rd_kafka_DescribeAcls_result_acls(result, &mut count);
            Ok((0..count).map(|i| read_binding(*acls.add(i))).collect())
        }
    }

    /// Creates `bindings`; every one must succeed.
    pub fn create(&self, bindings: &[Binding]) -> anyhow::Result<()> {
        if bindings.is_empty() {
            return Ok(());
        }
        // SAFETY: the bindings array lives until after the request; librdkafka copies it.
        unsafe {
            let mut natives = bindings
                .iter()
                .map(|b| new_binding(b, false))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let event = self.request(|rk, options, queue| {
                rd::rd_kafka_CreateAcls(rk, natives.as_mut_ptr(), natives.len(), options, queue)
            });
            rd::rd_kafka_AclBinding_destroy_array(natives.as_mut_ptr(), natives.len());
            let event = event.context("cannot create ACLs")?;
            let result = rd::rd_kafka_event_CreateAcls_result(event.0);
            let mut count = 0;
            let results = rd::rd_kafka_CreateAcls_result_acls(result, &mut count);
            for (i, binding) in bindings.iter().enumerate().take(count) {
                let error = rd::rd_kafka_acl_result_error(*results.add(i));
                if !error.is_null() {
                    bail!(
                        "cannot create ACL `{binding}`: {}",
                        cstr(rd::rd_kafka_error_string(error))
                    );
                }
            }
        }
        Ok(())
    }

    /// Deletes exactly `bindings` (each filter names every field, so it matches only itself).
    pub fn delete(&self, bindings: &[Binding]) -> anyhow::Result<()> {
        if bindings.is_empty() {
            return Ok(());
        }
        // SAFETY: as in `create`.
        unsafe {
            let mut natives = bindings
                .iter()
                .map(|b| new_binding(b, true))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let event = self.request(|rk, options, queue| {
                rd::rd_kafka_DeleteAcls(rk, natives.as_mut_ptr(), natives.len(), options, queue)
            });
            rd::rd_kafka_AclBinding_destroy_array(natives.as_mut_ptr(), natives.len());
            let event = event.context("cannot delete ACLs")?;
            let result = rd::rd_kafka_event_DeleteAcls_result(event.0);
            let mut count = 0;
            let responses = rd::rd_kafka_DeleteAcls_result_responses(result, &mut count);
            for (i, binding) in bindings.iter().enumerate().take(count) {
                let error = rd::rd_kafka_DeleteAcls_result_response_error(*responses.add(i));
                if !error.is_null() {
                    bail!(
                        "cannot delete ACL `{binding}`: {}",
                        cstr(rd::rd_kafka_error_string(error))
                    );
                }
            }
        }
        Ok(())
    }

    /// Sends one admin request through a queue of its own and waits for its result event.
    ///
    /// # Safety
    /// `send` must issue exactly one admin request on the given handle, options and queue.
    unsafe fn request(
        &self,
        send: impl FnOnce(
            *mut rd::rd_kafka_t,
            *const rd::rd_kafka_AdminOptions_t,
            *mut rd::rd_kafka_queue_t,
        ),
    ) -> anyhow::Result<Event> {
        let rk = self.client.inner().native_ptr();
        let options =
            rd::rd_kafka_AdminOptions_new(rk, rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ANY);
        let mut errstr = [0 as c_char; 512];
        rd::rd_kafka_AdminOptions_set_request_timeout(
            options,
            REQUEST_TIMEOUT.as_millis() as i32,
            errstr.as_mut_ptr(),
            errstr.len(),
        );
        let queue = rd::rd_kafka_queue_new(rk);
        send(rk, options, queue);
        let event = rd::rd_kafka_queue_poll(queue, (REQUEST_TIMEOUT.as_millis() + 5_000) as i32);
        rd::rd_kafka_queue_destroy(queue);
        rd::rd_kafka_AdminOptions_destroy(options);
        if event.is_null() {
            bail!(
                "the broker did not answer within {} s",
                REQUEST_TIMEOUT.as_secs()
            );
        }
        let event = Event(event);
        if rd::rd_kafka_event_error(event.0) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            bail!("{}", cstr(rd::rd_kafka_event_error_string(event.0)));
        }
        Ok(event)
    }
}

/// Owns a librdkafka event.
struct Event(*mut rd::rd_kafka_event_t);

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the event came from rd_kafka_queue_poll and is destroyed once.
        unsafe { rd::rd_kafka_event_destroy(self.0) }
    }
}

/// # Safety
/// `acl` must be a valid binding.
unsafe fn read_binding(acl: *const rd::rd_kafka_AclBinding_t) -> Binding {
    Binding {
        principal: cstr(rd::rd_kafka_AclBinding_principal(acl)),
        resource: rd::rd_kafka_AclBinding_restype(acl) as i32,
        name: cstr(rd::rd_kafka_AclBinding_name(acl)),
        pattern: rd::rd_kafka_AclBinding_resource_pattern_type(acl) as i32,
        operation: rd::rd_kafka_AclBinding_operation(acl) as i32,
        permission: rd::rd_kafka_AclBinding_permission_type(acl) as i32,
        host: cstr(rd::rd_kafka_AclBinding_host(acl)),
    }
}

/// A native binding (or, with `filter`, a filter matching exactly it).
///
/// # Safety
/// Calls librdkafka; the strings live until it returns (it copies them).
unsafe fn new_binding(b: &Binding, filter: bool) -> anyhow::Result<*mut rd::rd_kafka_AclBinding_t> {
    let name = CString::new(b.name.as_str())?;
    let principal = CString::new(b.principal.as_str())?;
    let host = CString::new(b.host.as_str())?;
    let mut errstr = [0 as c_char; 512];
    let args = (
        resource_code(b.resource),
        pattern_code(b.pattern),
        operation_code(b.operation),
        permission_code(b.permission),
    );
    let native = if filter {
        rd::rd_kafka_AclBindingFilter_new(
            args.0,
            name.as_ptr(),
            args.1,
            principal.as_ptr(),
            host.as_ptr(),
            args.2,
            args.3,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    } else {
        rd::rd_kafka_AclBinding_new(
            args.0,
            name.as_ptr(),
            args.1,
            principal.as_ptr(),
            host.as_ptr(),
            args.2,
            args.3,
            errstr.as_mut_ptr(),
            errstr.len(),
        )
    };
    if native.is_null() {
        bail!("invalid ACL `{b}`: {}", cstr(errstr.as_ptr()));
    }
    Ok(native)
}

// The raw codes back to librdkafka's enums (codes it does not know become UNKNOWN).
fn resource_code(code: i32) -> rd::rd_kafka_ResourceType_t {
    use rd::rd_kafka_ResourceType_t::*;
    [
        RD_KAFKA_RESOURCE_ANY,
        RD_KAFKA_RESOURCE_TOPIC,
        RD_KAFKA_RESOURCE_GROUP,
        RD_KAFKA_RESOURCE_BROKER,
        RD_KAFKA_RESOURCE_TRANSACTIONAL_ID,
    ]
    .into_iter()
    .find(|c| *c as i32 == code)
    .unwrap_or(RD_KAFKA_RESOURCE_UNKNOWN)
}

fn pattern_code(code: i32) -> rd::rd_kafka_ResourcePatternType_t {
    use rd::rd_kafka_ResourcePatternType_t::*;
    [
        RD_KAFKA_RESOURCE_PATTERN_ANY,
        RD_KAFKA_RESOURCE_PATTERN_MATCH,
        RD_KAFKA_RESOURCE_PATTERN_LITERAL,
        RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
    ]
    .into_iter()
    .find(|c| *c as i32 == code)
    .unwrap_or(RD_KAFKA_RESOURCE_PATTERN_UNKNOWN)
}

fn operation_code(code: i32) -> rd::rd_kafka_AclOperation_t {
    use rd::rd_kafka_AclOperation_t::*;
    [
        RD_KAFKA_ACL_OPERATION_ANY,
        RD_KAFKA_ACL_OPERATION_ALL,
        RD_KAFKA_ACL_OPERATION_READ,
        RD_KAFKA_ACL_OPERATION_WRITE,
        RD_KAFKA_ACL_OPERATION_CREATE,
        RD_KAFKA_ACL_OPERATION_DELETE,
        RD_KAFKA_ACL_OPERATION_ALTER,
        RD_KAFKA_ACL_OPERATION_DESCRIBE,
        RD_KAFKA_ACL_OPERATION_CLUSTER_ACTION,
        RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
        RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
        RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
    ]
    .into_iter()
    .find(|c| *c as i32 == code)
    .unwrap_or(RD_KAFKA_ACL_OPERATION_UNKNOWN)
}

fn permission_code(code: i32) -> rd::rd_kafka_AclPermissionType_t {
    use rd::rd_kafka_AclPermissionType_t::*;
    [
        RD_KAFKA_ACL_PERMISSION_TYPE_ANY,
        RD_KAFKA_ACL_PERMISSION_TYPE_DENY,
        RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
    ]
    .into_iter()
    .find(|c| *c as i32 == code)
    .unwrap_or(RD_KAFKA_ACL_PERMISSION_TYPE_UNKNOWN)
}

/// # Safety
/// `p` must be null or a NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[worker]]
name = "router"
principal = "User:reflex-router"
groups = [{ name = "reflex-router", operations = ["Read", "Describe"] }]
read = ["in"]
write = ["out", "in.dlq"]
describe = ["in"]

[[worker]]
name = "operator"
principal = "User:reflex-operator"
groups = [{ name = "reflexctl-", pattern = "prefixed", operations = ["Read"] }]
"#;

    #[test]
    fn read_write_and_describe_expand_to_bindings() {
        let file: AclFile = toml::from_str(FILE).unwrap();
        let lines: Vec<String> = file.bindings().iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "User:reflex-operator ALLOW READ on group reflexctl-*",
                "User:reflex-router ALLOW READ on topic in",
                "User:reflex-router ALLOW DESCRIBE on topic in",
                "User:reflex-router ALLOW WRITE on topic in.dlq",
                "User:reflex-router ALLOW DESCRIBE on topic in.dlq",
                "User:reflex-router ALLOW WRITE on topic out",
                "User:reflex-router ALLOW DESCRIBE on topic out",
                "User:reflex-router ALLOW READ on group reflex-router",
                "User:reflex-router ALLOW DESCRIBE on group reflex-router",
            ]
        );
    }

    #[test]
    fn the_plan_adds_what_is_missing_and_removes_what_was_not_declared() {
        let file: AclFile = toml::from_str(FILE).unwrap();
        let wanted = file.bindings();
        let mut current: BTreeSet<Binding> = wanted.iter().skip(1).cloned().collect();
        let mut extra = wanted.iter().next().unwrap().clone();
        extra.name = "everything".into();
        current.insert(extra.clone());
        let plan = Plan::new(&wanted, &current);
        assert_eq!(plan.add, vec![wanted.iter().next().unwrap().clone()]);
        assert_eq!(plan.remove, vec![extra]);
        assert!(Plan::new(&wanted, &wanted).is_empty());
    }

    #[test]
    fn a_principal_without_a_type_or_listed_twice_is_refused() {
        let dir = std::env::temp_dir().join(format!("reflex-acls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("acls.toml");
        std::fs::write(
            &path,
            "[[worker]]\nname = \"r\"\nprincipal = \"reflex-router\"\n",
        )
        .unwrap();
        let err = AclFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("User:reflex-router"), "{err}");
        std::fs::write(&path, "[[worker]]\nname = \"a\"\nprincipal = \"User:x\"\n[[worker]]\nname = \"b\"\nprincipal = \"User:x\"\n").unwrap();
        let err = AclFile::load(&path).unwrap_err().to_string();
        assert!(err.contains("twice"), "{err}");
        std::fs::write(
            &path,
            "[[worker]]\nname = \"a\"\nprincipal = \"User:x\"\nread = [\"t\"]\nwrites = [\"u\"]\n",
        )
        .unwrap();
        let err = format!("{:#}", AclFile::load(&path).unwrap_err());
        assert!(err.contains("writes"), "{err}");
    }
}
