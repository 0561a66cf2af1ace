//! callgate: a policy-gated callback decision engine for IM backends.
//!
//! Data flows one way:
//! request → [`protocol`] decode → [`event::Event`] → [`policy`] decide →
//! [`decision::Decision`] → [`protocol`] encode → reply, and [`record`].
//!
//! - [`config`]: flags, env and config file merged into one `Config`
//! - [`event`]: the one shape every callback decodes into, and how its command is named
//! - [`decision`]: what was decided for a callback, and why; no layer owns it
//! - [`catalog`]: what each IM server sends: its commands and their body fields (data only)
//! - [`protocol`]: OpenIM and Tencent wire formats; no rules
//! - [`policy`]: YAML policies → `PolicySet`; evaluation; live reload
//! - [`server`]: the warp listeners; the only module that knows HTTP
//! - [`ratecap`]: rolling-window counts for rate caps, in memory or in Redis
//! - [`lists`]: membership of lists held in Redis sets, asked live (with an optional short cache)
//! - [`redis_client`]: how caps, lists and the record stream reach Redis (one server or a cluster, TLS)
//! - [`redis_health`]: the one circuit breaker for Redis, shared by caps and lists
//! - [`replay`]: recorded OpenIM callbacks decided again with a candidate policy set
//! - [`duration`]: the `30s`/`1m` syntax shared by policies and config
//! - [`throttle`]: log lines an attacker cannot flood (a few a second per kind, then a count)

pub mod catalog;
pub mod config;
pub mod decision;
pub mod duration;
pub mod event;
pub mod lists;
pub mod policy;
pub mod protocol;
pub mod ratecap;
pub mod record;
pub mod redis_client;
pub mod redis_health;
pub mod replay;
pub mod server;
pub mod throttle;
