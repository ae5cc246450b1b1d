//! Tests of the Image v2 API.

use super::*;

#[test]
fn patch_paths_decode_to_one_key() {
    assert_eq!(patch_key(&json!("/name")).unwrap(), "name");
    assert_eq!(patch_key(&json!("/a~1b~0c")).unwrap(), "a/b~c");
    assert_eq!(patch_key(&json!(["name"])).unwrap(), "name");
    assert!(patch_key(&json!("name")).is_err());
    assert!(patch_key(&json!("/tags/0")).is_err());
    assert!(patch_key(&json!("/")).is_err());
}

#[test]
fn sort_parameters() {
    let q = |v: &[(&str, &str)]| -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        parse_sort(&q(&[])).unwrap(),
        vec![("created_at".into(), true), ("id".into(), true)]
    );
    assert_eq!(
        parse_sort(&q(&[("sort", "name:asc,size")])).unwrap(),
        vec![
            ("name".into(), false),
            ("size".into(), true),
            ("id".into(), true)
        ]
    );
    assert_eq!(
        parse_sort(&q(&[("sort_key", "name"), ("sort_dir", "asc")])).unwrap(),
        vec![("name".into(), false), ("id".into(), false)]
    );
    assert!(parse_sort(&q(&[("sort_key", "bogus")])).is_err());
    assert!(parse_sort(&q(&[("sort_dir", "up")])).is_err());
}
