//! Which tunnels the XDP program looks into (`--inner`, `--inner-udp-ports`),
//! and what it does with an encapsulated flow, for `steer hash` to explain.

use std::collections::BTreeMap;

use steer_common::{
    tunnel::{self, MAX_UDP_TUNNELS},
    Encap, PassReason, SteerConfig,
};

use crate::error::{Error, Result};

/// The tunnels `--inner auto` (the default) looks into: the two the kernel's
/// flow dissector parses for RPS, and the UDP tunnels with an IANA port.
pub const AUTO: [Encap; 5] = [Encap::Ipip, Encap::Gre, Encap::Vxlan, Encap::Geneve, Encap::Gtpu];

/// Validated tunnel settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InnerSettings {
    /// IP-level tunnels looked into.
    pub ip: Vec<Encap>,
    /// UDP destination port -> tunnel.
    pub udp: BTreeMap<u16, Encap>,
}

impl Default for InnerSettings {
    /// `--inner auto`.
    fn default() -> Self {
        Self {
            ip: AUTO.into_iter().filter(|e| !e.is_udp()).collect(),
            udp: AUTO.into_iter().filter_map(|e| Some((e.default_port()?, e))).collect(),
        }
    }
}

impl InnerSettings {
    /// `inner`: "auto" (default), "off", or a comma list of tunnel names.
    /// `udp_ports`: "PORT=KIND,..." added to what `inner` names.
    pub fn new(inner: Option<&str>, udp_ports: Option<&str>) -> Result<Self> {
        let bad = |value: &str, why: String| Error::BadValue { what: "--inner", value: value.into(), why };
        let names = || Encap::ALL.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ");
        let kinds: Vec<Encap> = match inner.map(str::trim).unwrap_or("auto") {
            "auto" if udp_ports.is_none() => return Ok(Self::default()),
            "auto" => AUTO.to_vec(),
            "off" | "none" => vec![],
            list => list
                .split(',')
                .map(|n| {
                    let n = n.trim();
                    Encap::ALL
                        .into_iter()
                        .find(|e| e.name() == n && (!e.is_udp() || e.default_port().is_some()))
                        .ok_or_else(|| {
                            bad(
                                list,
                                format!(
                                    "\"{n}\" is not one of auto, off, ipip, gre, vxlan, geneve, gtpu \
                                     (fou and gue have no standard port: name one with --inner-udp-ports)"
                                ),
                            )
                        })
                })
                .collect::<Result<_>>()?,
        };
        let mut udp = BTreeMap::new();
        for e in &kinds {
            if let Some(p) = e.default_port() {
                udp.insert(p, *e);
            }
        }
        if let Some(list) = udp_ports {
            let bad = |why: String| Error::BadValue { what: "--inner-udp-ports", value: list.into(), why };
            if kinds.is_empty() {
                return Err(bad("--inner off turns tunnel parsing off; drop one of the two".into()));
            }
            for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let (port, kind) = item
                    .split_once('=')
                    .ok_or_else(|| bad(format!("\"{item}\" is not PORT=KIND (e.g. 8472=vxlan)")))?;
                let port: u16 = port
                    .trim()
                    .parse()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(format!("\"{port}\" is not a UDP port (1-65535)")))?;
                let kind = Encap::ALL
                    .into_iter()
                    .find(|e| e.is_udp() && e.name() == kind.trim())
                    .ok_or_else(|| {
                        bad(format!(
                            "\"{kind}\" is not a UDP tunnel: vxlan, geneve, gtpu, fou or gue ({})",
                            names()
                        ))
                    })?;
                if let Some(old) = udp.insert(port, kind) {
                    if old != kind || Some(port) != kind.default_port() {
                        return Err(bad(format!(
                            "port {port} is named twice ({} and {})",
                            old.name(),
                            kind.name()
                        )));
                    }
                }
            }
        }
        if udp.len() > MAX_UDP_TUNNELS {
            return Err(Error::BadValue {
                what: "--inner-udp-ports",
                value: udp_ports.unwrap_or_default().into(),
                why: format!(
                    "{} UDP tunnel ports in all; the XDP program checks at most {MAX_UDP_TUNNELS}",
                    udp.len()
                ),
            });
        }
        let ip = kinds.into_iter().filter(|e| !e.is_udp()).collect();
        Ok(Self { ip, udp })
    }

    /// Writes these settings into the XDP program's configuration.
    pub fn apply(&self, cfg: &mut SteerConfig) {
        cfg.inner_ip = self.ip.iter().map(|e| e.ip_bit()).fold(0, |a, b| a | b);
        cfg.udp_tunnels = [0; MAX_UDP_TUNNELS];
        for (slot, (port, e)) in cfg.udp_tunnels.iter_mut().zip(&self.udp) {
            *slot = tunnel::udp_slot(*port, *e);
        }
    }

    /// One line for logs and `steer hash`: "ipip, gre, udp 2152 gtpu, ..." or "off".
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .ip
            .iter()
            .map(|e| e.name().to_string())
            .chain(self.udp.iter().map(|(p, e)| format!("udp {p} {}", e.name())))
            .collect();
        if parts.is_empty() {
            "off".into()
        } else {
            parts.join(", ")
        }
    }
}

/// What the XDP program does with a packet of tunnel `encap` whose outer
/// protocol is `outer_proto` (and UDP destination port `outer_dport`), given
/// the configuration: the same decision, from the same functions, as in the
/// kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The inner flow is hashed.
    Inner,
    /// The outer flow is hashed (a UDP port that is not a tunnel port here).
    Outer,
    /// Passed unsteered, for this reason.
    Pass(PassReason),
}

pub fn decide(cfg: &SteerConfig, encap: Encap, outer_dport: u16) -> Decision {
    if encap.is_udp() {
        match cfg.udp_tunnel(u16::from_ne_bytes(outer_dport.to_be_bytes())) {
            Some(_) => Decision::Inner,
            None => Decision::Outer,
        }
    } else if cfg
        .ip_tunnel(if encap == Encap::Gre { tunnel::IPPROTO_GRE } else { tunnel::IPPROTO_IPIP })
        .is_some()
    {
        Decision::Inner
    } else {
        Decision::Pass(PassReason::UnknownL4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(inner: Option<&str>, ports: Option<&str>) -> String {
        InnerSettings::new(inner, ports).unwrap_err().to_string()
    }

    #[test]
    fn auto_is_the_default_and_fills_the_udp_table() {
        let s = InnerSettings::new(None, None).unwrap();
        assert_eq!(s, InnerSettings::new(Some("auto"), None).unwrap());
        assert_eq!(s.ip, vec![Encap::Ipip, Encap::Gre]);
        assert_eq!(s.udp.get(&4789), Some(&Encap::Vxlan));
        assert_eq!(s.udp.get(&6081), Some(&Encap::Geneve));
        assert_eq!(s.udp.get(&2152), Some(&Encap::Gtpu));
        let mut cfg = SteerConfig::default();
        s.apply(&mut cfg);
        assert_eq!(cfg.inner_ip, tunnel::INNER_IPIP | tunnel::INNER_GRE);
        assert_eq!(decide(&cfg, Encap::Vxlan, 4789), Decision::Inner);
        assert_eq!(decide(&cfg, Encap::Vxlan, 8472), Decision::Outer);
        assert_eq!(decide(&cfg, Encap::Gre, 0), Decision::Inner);
    }

    #[test]
    fn off_and_lists_choose_exactly_what_they_name() {
        let off = InnerSettings::new(Some("off"), None).unwrap();
        let mut cfg = SteerConfig::default();
        off.apply(&mut cfg);
        assert_eq!(cfg, SteerConfig::default());
        assert_eq!(off.describe(), "off");
        assert_eq!(decide(&cfg, Encap::Ipip, 0), Decision::Pass(PassReason::UnknownL4));
        let s = InnerSettings::new(Some("gre, vxlan"), Some("8472=vxlan,5555=fou,6080=gue")).unwrap();
        assert_eq!(s.ip, vec![Encap::Gre]);
        assert_eq!(s.describe(), "gre, udp 4789 vxlan, udp 5555 fou, udp 6080 gue, udp 8472 vxlan");
    }

    #[test]
    fn bad_values_are_named() {
        assert!(err(Some("ipip,mpls"), None).contains("\"mpls\""));
        assert!(err(Some("fou"), None).contains("--inner-udp-ports"));
        assert!(err(None, Some("4789")).contains("\"4789\" is not PORT=KIND"));
        assert!(err(None, Some("0=fou")).contains("\"0\""));
        assert!(err(None, Some("70000=fou")).contains("\"70000\""));
        assert!(err(None, Some("5555=gre")).contains("\"gre\""));
        assert!(err(None, Some("4789=fou")).contains("port 4789 is named twice"));
        assert!(err(Some("off"), Some("5555=fou")).contains("--inner off"));
        let many = (1..=6).map(|p| format!("{p}=fou")).collect::<Vec<_>>().join(",");
        assert!(err(None, Some(&many)).contains("at most 8"));
        // Naming a standard port with its own kind again is harmless.
        assert!(InnerSettings::new(None, Some("4789=vxlan")).is_ok());
    }
}
