//! The lvm2 tools' `--reportformat json` output (`lvs`, `vgs`), with sizes in
//! bytes (`--units b --nosuffix`).

use serde::Deserialize;

use super::StorageError;

/// `{"report": [ {...section...} ]}`.
#[derive(Debug, Deserialize)]
struct Report<T> {
    report: Vec<T>,
}

#[derive(Debug, Deserialize)]
struct VgSection {
    #[serde(default)]
    vg: Vec<VgRow>,
}

#[derive(Debug, Deserialize)]
struct LvSection {
    #[serde(default)]
    lv: Vec<LvRow>,
}

#[derive(Debug, Deserialize)]
struct VgRow {
    vg_name: String,
    vg_size: String,
    vg_free: String,
}

#[derive(Debug, Deserialize)]
struct LvRow {
    lv_name: String,
    lv_size: String,
    #[serde(default)]
    lv_attr: String,
    #[serde(default)]
    pool_lv: String,
    #[serde(default)]
    data_percent: String,
}

/// One volume group, as `vgs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Vg {
    /// Its name.
    pub name: String,
    /// Bytes in all.
    pub size: u64,
    /// Bytes not in any LV.
    pub free: u64,
}

/// One logical volume, as `lvs` reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lv {
    /// Its name.
    pub name: String,
    /// Its (virtual) size in bytes.
    pub size: u64,
    /// `lv_attr` (`Vwi-a-tz--`: `V` thin volume, `t` thin pool; 5th char `a` = active).
    pub attr: String,
    /// The thin pool it lives in, if a thin volume.
    pub pool: String,
    /// For a thin pool or thin volume: percent of the data space used.
    pub data_percent: Option<f64>,
}

impl Lv {
    /// Whether the LV is active (has a device node).
    pub fn active(&self) -> bool {
        self.attr.as_bytes().get(4) == Some(&b'a')
    }
}

fn bad(what: &str, reason: impl std::fmt::Display) -> StorageError {
    StorageError::Failed {
        what: format!("parsing {what} output"),
        reason: reason.to_string(),
    }
}

fn bytes(what: &str, s: &str) -> Result<u64, StorageError> {
    // `--units b --nosuffix` gives whole bytes; tolerate a trailing `B`.
    s.trim()
        .trim_end_matches(['B', 'b'])
        .parse()
        .map_err(|e| bad(what, format!("size {s:?}: {e}")))
}

/// Parses `vgs --reportformat json --units b --nosuffix -o vg_name,vg_size,vg_free`.
pub(crate) fn parse_vgs(json: &str) -> Result<Vec<Vg>, StorageError> {
    let r: Report<VgSection> = serde_json::from_str(json).map_err(|e| bad("vgs", e))?;
    r.report
        .into_iter()
        .flat_map(|s| s.vg)
        .map(|v| {
            Ok(Vg {
                size: bytes("vgs", &v.vg_size)?,
                free: bytes("vgs", &v.vg_free)?,
                name: v.vg_name,
            })
        })
        .collect()
}

/// Parses `lvs --reportformat json --units b --nosuffix
/// -o lv_name,lv_size,lv_attr,pool_lv,data_percent`.
pub(crate) fn parse_lvs(json: &str) -> Result<Vec<Lv>, StorageError> {
    let r: Report<LvSection> = serde_json::from_str(json).map_err(|e| bad("lvs", e))?;
    r.report
        .into_iter()
        .flat_map(|s| s.lv)
        .map(|l| {
            let pct = l.data_percent.trim();
            Ok(Lv {
                size: bytes("lvs", &l.lv_size)?,
                data_percent: if pct.is_empty() {
                    None
                } else {
                    Some(
                        pct.parse()
                            .map_err(|e| bad("lvs", format!("data_percent {pct:?}: {e}")))?,
                    )
                },
                name: l.lv_name,
                attr: l.lv_attr,
                pool: l.pool_lv,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lvm2_reports() {
        let vgs = r#"  {
      "report": [
          {
              "vg": [
                  {"vg_name":"nubo-vg", "vg_size":"4290772992", "vg_free":"4290772992"}
              ]
          }
      ]
  }"#;
        assert_eq!(
            parse_vgs(vgs).unwrap(),
            vec![Vg {
                name: "nubo-vg".into(),
                size: 4_290_772_992,
                free: 4_290_772_992
            }]
        );
        let lvs = r#"{"report": [{"lv": [
            {"lv_name":"pool", "lv_size":"4072669184", "lv_attr":"twi-aotz--", "pool_lv":"", "data_percent":"1.50"},
            {"lv_name":"volume-a", "lv_size":"1073741824", "lv_attr":"Vwi-a-tz--", "pool_lv":"pool", "data_percent":"0.00"},
            {"lv_name":"snapshot-b", "lv_size":"1073741824B", "lv_attr":"Vri---tz-k", "pool_lv":"pool", "data_percent":""}
        ]}]}"#;
        let l = parse_lvs(lvs).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].data_percent, Some(1.5));
        assert!(l[1].active());
        assert_eq!(l[1].pool, "pool");
        assert_eq!(l[2].size, 1 << 30);
        assert!(!l[2].active());
        assert_eq!(l[2].data_percent, None);
        assert!(parse_lvs(r#"{"report": [{}]}"#).unwrap().is_empty());
    }

    #[test]
    fn bad_reports_are_errors() {
        for bad in [
            "",
            "not json",
            r#"{"report": [{"lv": [{"lv_name":"x","lv_size":"12x"}]}]}"#,
            r#"{"report": [{"lv": [{"lv_name":"x","lv_size":"1","data_percent":"?"}]}]}"#,
        ] {
            assert!(parse_lvs(bad).is_err(), "{bad}");
        }
        assert!(parse_vgs(r#"{"report": [{"vg": [{"vg_name":"x"}]}]}"#).is_err());
    }
}
