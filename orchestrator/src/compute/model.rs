//! Rows of the compute tables (flavors, servers) and their Nova JSON.

use serde_json::{json, Value};

/// Nova statuses we use.
pub mod status {
    /// Being scheduled and started.
    pub const BUILD: &str = "BUILD";
    /// Running.
    pub const ACTIVE: &str = "ACTIVE";
    /// Stopped (the VMM is not running).
    pub const SHUTOFF: &str = "SHUTOFF";
    /// A soft reboot is in progress.
    pub const REBOOT: &str = "REBOOT";
    /// A hard reboot is in progress.
    pub const HARD_REBOOT: &str = "HARD_REBOOT";
    /// Failed; see the fault.
    pub const ERROR: &str = "ERROR";
}

/// Nova power states.
pub mod power {
    /// Unknown / not started.
    pub const NOSTATE: i64 = 0;
    /// Running.
    pub const RUNNING: i64 = 1;
    /// Shut down.
    pub const SHUTDOWN: i64 = 4;
}

/// A flavor.
#[derive(Debug, Clone)]
pub struct Flavor {
    /// Id (Nova flavor ids are strings).
    pub id: String,
    /// Unique name.
    pub name: String,
    /// vCPUs.
    pub vcpus: i64,
    /// RAM in MiB.
    pub ram: i64,
    /// Root disk in GiB (0 = the image's size).
    pub disk: i64,
    /// Swap in MiB.
    pub swap: i64,
    /// Ephemeral disk in GiB.
    pub ephemeral: i64,
    /// Visible to every project.
    pub is_public: bool,
    /// Network bandwidth factor (informational).
    pub rxtx_factor: f64,
    /// Free text.
    pub description: Option<String>,
}

impl Flavor {
    /// Nova's flavor JSON (microversion 2.1 shape).
    pub fn to_json(&self, base: &str) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "ram": self.ram,
            "vcpus": self.vcpus,
            "disk": self.disk,
            "swap": self.swap,
            "OS-FLV-EXT-DATA:ephemeral": self.ephemeral,
            "OS-FLV-DISABLED:disabled": false,
            "os-flavor-access:is_public": self.is_public,
            "rxtx_factor": self.rxtx_factor,
            "links": links(base, "flavors", &self.id),
        })
    }
}

/// Self and bookmark links of a compute resource.
pub fn links(base: &str, collection: &str, id: &str) -> Value {
    json!([
        { "rel": "self", "href": format!("{base}/compute/v2.1/{collection}/{id}") },
        { "rel": "bookmark", "href": format!("{base}/compute/{collection}/{id}") },
    ])
}

/// A server row.
#[derive(Debug, Clone)]
pub struct Server {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Owning project.
    pub project_id: String,
    /// Creating user.
    pub user_id: String,
    /// Boot image.
    pub image_id: String,
    /// Flavor it was created with.
    pub flavor_id: String,
    /// vCPUs (copied from the flavor at create time).
    pub vcpus: i64,
    /// RAM in MiB.
    pub ram: i64,
    /// Disk in GiB.
    pub disk: i64,
    /// Nova status.
    pub status: String,
    /// Nova task state.
    pub task_state: Option<String>,
    /// Nova power state.
    pub power_state: i64,
    /// Fault JSON (`{"code", "message", "created"}`) when in ERROR.
    pub fault: Option<String>,
    /// Metadata JSON object.
    pub metadata: String,
    /// Created.
    pub created_at: String,
    /// Last changed.
    pub updated_at: String,
    /// Last started.
    pub launched_at: Option<String>,
}

impl Server {
    fn vm_state(&self) -> &'static str {
        match self.status.as_str() {
            status::BUILD => "building",
            status::SHUTOFF => "stopped",
            status::ERROR => "error",
            _ => "active",
        }
    }

    /// Nova's `hostId`: an opaque hash of the project and host.
    pub fn host_id(project_id: &str) -> String {
        use sha2::{Digest, Sha224};
        hex::encode(Sha224::digest(format!("{project_id}nubo").as_bytes()))
    }

    /// Nova's server document (microversion 2.1 shape), ready to serialize;
    /// admin-only fields when `admin`. `host_id` is [`Server::host_id`] of
    /// the server's project (callers listing many servers compute it once);
    /// `volumes` are the ids of its attached volumes.
    pub fn view<'a>(
        &'a self,
        base: &'a str,
        admin: bool,
        host_id: &'a str,
        addresses: Value,
        volumes: Vec<String>,
    ) -> ServerView<'a> {
        let metadata = serde_json::value::RawValue::from_string(self.metadata.clone())
            .unwrap_or_else(|_| empty_object());
        let fault = self.fault.as_deref().and_then(|f| fault_view(f, admin));
        let bookmark = |kind: &str, id: &str| format!("{base}/compute/{kind}/{id}");
        ServerView {
            id: &self.id,
            name: &self.name,
            status: &self.status,
            tenant_id: &self.project_id,
            user_id: &self.user_id,
            metadata,
            host_id,
            // Nova's "" for a server booted from a volume.
            image: if self.image_id.is_empty() {
                ImageView::None("")
            } else {
                ImageView::Ref(RefView {
                    id: &self.image_id,
                    links: [LinkView {
                        rel: "bookmark",
                        href: bookmark("images", &self.image_id),
                    }],
                })
            },
            flavor: RefView {
                id: &self.flavor_id,
                links: [LinkView {
                    rel: "bookmark",
                    href: bookmark("flavors", &self.flavor_id),
                }],
            },
            created: &self.created_at,
            updated: &self.updated_at,
            addresses,
            access_ipv4: "",
            access_ipv6: "",
            links: [
                LinkView {
                    rel: "self",
                    href: format!("{base}/compute/v2.1/servers/{}", self.id),
                },
                LinkView {
                    rel: "bookmark",
                    href: bookmark("servers", &self.id),
                },
            ],
            disk_config: "MANUAL",
            progress: if self.status == status::ACTIVE {
                100
            } else {
                0
            },
            availability_zone: "nova",
            task_state: self.task_state.as_deref(),
            vm_state: self.vm_state(),
            power_state: self.power_state,
            launched_at: self.launched_at.as_deref(),
            terminated_at: None,
            config_drive: "",
            key_name: None,
            security_groups: [],
            volumes_attached: volumes.into_iter().map(|id| VolumeRef { id }).collect(),
            host: admin.then(super::host_name),
            hypervisor_hostname: admin.then(super::host_name),
            instance_name: admin.then(|| format!("instance-{}", self.id)),
            fault,
        }
    }

    /// [`Server::view`] as a JSON value (`addresses` from the Networking
    /// service, `volumes` from the Block Storage service).
    pub fn to_json(
        &self,
        base: &str,
        admin: bool,
        addresses: Value,
        volumes: Vec<String>,
    ) -> Value {
        let host_id = Server::host_id(&self.project_id);
        serde_json::to_value(self.view(base, admin, &host_id, addresses, volumes))
            .unwrap_or(Value::Null)
    }
}

/// A stored fault (`{"code", "message", "created"}`) as the viewer may see
/// it. As in Nova, `details` is for admins only (here: the full message);
/// others get the message without host details — file system paths of the
/// host are replaced by `(host path)`.
fn fault_view(stored: &str, admin: bool) -> Option<Box<serde_json::value::RawValue>> {
    let mut fault: serde_json::Map<String, Value> = serde_json::from_str(stored).ok()?;
    let message = fault
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if admin {
        fault.insert("details".into(), Value::String(message));
    } else {
        fault.insert("message".into(), Value::String(redact_host_paths(&message)));
    }
    serde_json::value::to_raw_value(&fault).ok()
}

/// `text` for a non-admin: terminal escape sequences and control
/// characters but newlines removed, and every absolute path of two or more
/// components (`/a/b...`, up to the next space, quote, comma, colon or
/// bracket, not glued to a word before it) replaced by `(host path)`.
pub fn redact_host_paths(text: &str) -> String {
    const END: &[char] = &[
        ' ', '\t', '\n', '"', '\'', ',', ':', ';', '(', ')', '[', ']',
    ];
    let text = strip_escapes(text);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(i) = rest.find('/') {
        let starts_word = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '~')));
        let len = rest[i..].find(END).unwrap_or(rest.len() - i);
        let word = &rest[i..i + len];
        out.push_str(&rest[..i]);
        if starts_word && word[1..].contains('/') {
            out.push_str("(host path)");
        } else {
            out.push_str(word);
        }
        rest = &rest[i + len..];
    }
    out.push_str(rest);
    out
}

/// `text` without ANSI escape sequences (`ESC [ ... final`) and without
/// control characters other than newlines.
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters and intermediates, then one final byte.
                for p in chars.by_ref() {
                    if ('\u{40}'..='\u{7e}').contains(&p) {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\n' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

fn empty_object() -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string("{}".to_string()).unwrap_or_else(|_| unreachable_raw())
}

#[cold]
fn unreachable_raw() -> Box<serde_json::value::RawValue> {
    // "{}" is always valid JSON; this only satisfies the type.
    serde_json::value::to_raw_value(&serde_json::Map::new())
        .unwrap_or_else(|_| serde_json::value::to_raw_value(&()).unwrap_or_default())
}

/// `{"rel", "href"}`.
#[derive(serde::Serialize)]
pub struct LinkView {
    rel: &'static str,
    href: String,
}

/// `{"id", "links"}` of the image or flavor a server refers to.
#[derive(serde::Serialize)]
pub struct RefView<'a> {
    id: &'a str,
    links: [LinkView; 1],
}

/// A server's `image`: the image it booted, or `""` (booted from a volume).
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum ImageView<'a> {
    /// `{"id", "links"}`.
    Ref(RefView<'a>),
    /// `""`.
    None(&'static str),
}

/// One of `os-extended-volumes:volumes_attached` (2.1: the id only).
#[derive(serde::Serialize)]
pub struct VolumeRef {
    id: String,
}

/// `{}`.
#[derive(serde::Serialize)]
pub struct EmptyObject {}

/// A server as Nova renders it (2.1), borrowed from a [`Server`].
#[derive(serde::Serialize)]
pub struct ServerView<'a> {
    id: &'a str,
    name: &'a str,
    status: &'a str,
    tenant_id: &'a str,
    user_id: &'a str,
    metadata: Box<serde_json::value::RawValue>,
    #[serde(rename = "hostId")]
    host_id: &'a str,
    image: ImageView<'a>,
    flavor: RefView<'a>,
    created: &'a str,
    updated: &'a str,
    addresses: Value,
    #[serde(rename = "accessIPv4")]
    access_ipv4: &'static str,
    #[serde(rename = "accessIPv6")]
    access_ipv6: &'static str,
    links: [LinkView; 2],
    #[serde(rename = "OS-DCF:diskConfig")]
    disk_config: &'static str,
    progress: u8,
    #[serde(rename = "OS-EXT-AZ:availability_zone")]
    availability_zone: &'static str,
    #[serde(rename = "OS-EXT-STS:task_state")]
    task_state: Option<&'a str>,
    #[serde(rename = "OS-EXT-STS:vm_state")]
    vm_state: &'static str,
    #[serde(rename = "OS-EXT-STS:power_state")]
    power_state: i64,
    #[serde(rename = "OS-SRV-USG:launched_at")]
    launched_at: Option<&'a str>,
    #[serde(rename = "OS-SRV-USG:terminated_at")]
    terminated_at: Option<&'a str>,
    config_drive: &'static str,
    key_name: Option<&'a str>,
    security_groups: [(); 0],
    #[serde(rename = "os-extended-volumes:volumes_attached")]
    volumes_attached: Vec<VolumeRef>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:host",
        skip_serializing_if = "Option::is_none"
    )]
    host: Option<&'static str>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:hypervisor_hostname",
        skip_serializing_if = "Option::is_none"
    )]
    hypervisor_hostname: Option<&'static str>,
    #[serde(
        rename = "OS-EXT-SRV-ATTR:instance_name",
        skip_serializing_if = "Option::is_none"
    )]
    instance_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fault: Option<Box<serde_json::value::RawValue>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_redacted_for_non_admins() {
        let msg = "Build aborted: cannot open disk /var/lib/nubo/instances/x/disk.qcow2: backing file \"/srv/images/abc\" (path=/a/b) see vmm.log, 1/2 done, /tmp";
        assert_eq!(
            redact_host_paths(msg),
            "Build aborted: cannot open disk (host path): backing file \"(host path)\" (path=(host path)) see vmm.log, 1/2 done, /tmp"
        );
        let stored = r#"{"code":500,"message":"open /etc/nubo/x failed","created":"t"}"#;
        let member: Value =
            serde_json::from_str(fault_view(stored, false).expect("view").get()).expect("json");
        assert_eq!(member["message"], "open (host path) failed");
        assert!(member.get("details").is_none(), "{member}");
        let admin: Value =
            serde_json::from_str(fault_view(stored, true).expect("view").get()).expect("json");
        assert_eq!(admin["message"], "open /etc/nubo/x failed");
        assert_eq!(admin["details"], "open /etc/nubo/x failed");
        assert_eq!(
            redact_host_paths("a \u{1b}[2mpath\u{1b}[0m=\u{1b}[0m/tmp/x/y\u{7} b"),
            "a path=(host path) b"
        );
    }
}

/// One recorded action.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// The server it was asked of.
    pub server_id: String,
    /// The API request that asked for it (`x-openstack-request-id`).
    pub request_id: String,
    /// Nova's action name: create, stop, start, reboot.
    pub action: String,
    /// Who asked.
    pub project_id: String,
    /// Who asked.
    pub user_id: String,
    /// When it was accepted.
    pub start_time: String,
    /// When its task ended (None while it runs).
    pub finish_time: Option<String>,
    /// "Success" or "Error" once finished.
    pub result: Option<String>,
    /// Why it failed (the server's fault message).
    pub detail: Option<String>,
}

impl Action {
    /// Nova's event name for the compute-side work of this action.
    pub fn event_name(&self) -> String {
        match self.action.as_str() {
            "create" => "compute__do_build_and_run_instance".into(),
            other => format!("compute_{other}_instance"),
        }
    }
}

/// Who asked for an action, and in which request.
#[derive(Debug, Clone)]
pub struct Requester<'a> {
    /// `x-openstack-request-id` of the request.
    pub request_id: &'a str,
    /// The caller's project.
    pub project_id: &'a str,
    /// The caller.
    pub user_id: &'a str,
}
