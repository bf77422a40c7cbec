//! Meter spec tests: every form parses to its kind and prints back the same.

use super::*;

/// The kind of a spec that configures no period.
fn p(s: &str) -> Result<MeterKind, SpecError> {
    s.parse::<MeterSpec>().map(|m| {
        assert_eq!(m.period_ms, None);
        m.kind
    })
}

#[test]
fn nvml_forms() {
    let nvml = |selectors, counter_ms| {
        Ok(MeterKind::Nvml {
            selectors,
            counter_ms,
        })
    };
    assert_eq!(p("nvml"), nvml(vec![], None));
    assert_eq!(
        p("nvml:0,1"),
        nvml(vec![NvmlSelector::Index(0), NvmlSelector::Index(1)], None)
    );
    assert_eq!(
        p("nvml:GPU-abc,2"),
        nvml(
            vec![NvmlSelector::Uuid("GPU-abc".into()), NvmlSelector::Index(2)],
            None
        )
    );
    assert_eq!(p("nvml:zero"), Err(SpecError::BadNvmlDevice("zero".into())));
    assert_eq!(p("nvml:counter_ms=1000"), nvml(vec![], Some(1000)));
    assert_eq!(p("nvml,counter_ms=1000"), nvml(vec![], Some(1000)));
    assert_eq!(
        p("nvml:0,counter_ms=500,1"),
        nvml(
            vec![NvmlSelector::Index(0), NvmlSelector::Index(1)],
            Some(500)
        )
    );
    assert_eq!(
        p("nvml:counter_ms=0"),
        Err(SpecError::BadCounterMs("0".into()))
    );
    assert_eq!(
        p("nvml:counter_ms=5001"),
        Err(SpecError::BadCounterMs("5001".into()))
    );
    assert_eq!(
        p("nvml:counter_ms=5,counter_ms=6"),
        Err(SpecError::DuplicateOption("counter_ms".into()))
    );
    let spec: MeterSpec = "nvml:0,counter_ms=1000,period_ms=100".parse().unwrap();
    assert_eq!(spec.period_ms, Some(100));
    assert_eq!(spec.to_string(), "nvml:0,counter_ms=1000,period_ms=100");
    assert_eq!(
        "nvml,counter_ms=1000"
            .parse::<MeterSpec>()
            .unwrap()
            .to_string(),
        "nvml:counter_ms=1000"
    );
}

#[test]
fn counter_file_options_from_the_right() {
    assert_eq!(
        p("counter-file:/a,b/energy,unit=mj,wrap=1000"),
        Ok(MeterKind::CounterFile {
            path: "/a,b/energy".into(),
            unit: Unit::Millijoules,
            wrap: Some(Wrap::Range(1000)),
        })
    );
    assert_eq!(
        p("counter-file:/e,wrap-file=/m"),
        Ok(MeterKind::CounterFile {
            path: "/e".into(),
            unit: Unit::Microjoules,
            wrap: Some(Wrap::File("/m".into())),
        })
    );
    assert_eq!(
        p("counter-file:/e,unit=kwh"),
        Err(SpecError::BadUnit("kwh".into()))
    );
    assert_eq!(
        p("counter-file:/e,wrap=-1"),
        Err(SpecError::BadWrap("-1".into()))
    );
    assert_eq!(
        p("counter-file:/e,wrap=0"),
        Err(SpecError::BadWrap("0".into()))
    );
    assert_eq!(
        p("counter-file:/e,wrap=5,wrap-file=/m"),
        Err(SpecError::DuplicateOption("wrap=5".into()))
    );
    assert_eq!(
        p("counter-file:"),
        Err(SpecError::MissingPath("counter-file"))
    );
    assert_eq!(
        p("counter-file"),
        Err(SpecError::MissingPath("counter-file"))
    );
}

#[test]
fn other_kinds_and_errors() {
    assert_eq!(p("sim"), Ok(MeterKind::Sim { watts: 100.0 }));
    assert_eq!(p("sim:250W"), Ok(MeterKind::Sim { watts: 250.0 }));
    assert_eq!(p("sim:-3"), Err(SpecError::BadWatts("-3".into())));
    assert_eq!(p("sim:NaN"), Err(SpecError::BadWatts("NaN".into())));
    assert_eq!(
        p("rapl"),
        Ok(MeterKind::Rapl {
            root: DEFAULT_POWERCAP_ROOT.into()
        })
    );
    assert_eq!(
        p("rapl:/tmp/pc"),
        Ok(MeterKind::Rapl {
            root: "/tmp/pc".into()
        })
    );
    assert_eq!(
        p("replay:/t.csv"),
        Ok(MeterKind::Replay {
            path: "/t.csv".into()
        })
    );
    assert_eq!(p("replay"), Err(SpecError::MissingPath("replay")));
    assert_eq!(p("  "), Err(SpecError::Empty));
    assert_eq!(p("ipmi:1"), Err(SpecError::UnknownKind("ipmi".into())));
}

#[test]
fn config_values_are_the_same_strings() {
    #[derive(serde::Deserialize)]
    struct File {
        meters: Vec<MeterSpec>,
    }
    let f: File = toml::from_str(r#"meters = ["nvml:0", "sim:50"]"#).expect("toml");
    assert_eq!(
        f.meters,
        [
            MeterSpec::from(MeterKind::Nvml {
                selectors: vec![NvmlSelector::Index(0)],
                counter_ms: None
            }),
            MeterKind::Sim { watts: 50.0 }.into()
        ]
    );
    let bad = toml::from_str::<File>(r#"meters = ["nvml:x"]"#)
        .err()
        .map(|e| e.to_string());
    assert!(
        bad.is_some_and(|e| e.contains("nvml device \"x\"")),
        "error names the part"
    );
    assert_eq!(
        serde_json::to_string(&MeterSpec::from(MeterKind::Sim { watts: 2.5 }))
            .ok()
            .as_deref(),
        Some("\"sim:2.5\"")
    );
}

#[test]
fn display_round_trips() {
    for s in [
        "nvml",
        "nvml:0,GPU-x",
        "counter-file:/e,unit=j,wrap=7",
        "counter-file:/e,wrap-file=/m",
        "rapl",
        "rapl:/x",
        "sim:12.5",
        "replay:/t.csv",
        "nvml,period_ms=100",
        "counter-file:/e,unit=j,period_ms=20",
        "sim:3,period_ms=250",
    ] {
        let spec: MeterSpec = s.parse().expect("valid spec");
        assert_eq!(spec.to_string(), s);
        assert_eq!(spec.to_string().parse::<MeterSpec>(), Ok(spec));
    }
}

#[test]
fn any_spec_may_configure_its_period() {
    let q = |s: &str| s.parse::<MeterSpec>().map(|m| (m.kind, m.period_ms));
    assert_eq!(
        q("nvml:0,1,period_ms=100"),
        Ok((
            MeterKind::Nvml {
                selectors: vec![NvmlSelector::Index(0), NvmlSelector::Index(1)],
                counter_ms: None
            },
            Some(100)
        ))
    );
    assert_eq!(
        q("nvml:period_ms=20"),
        Ok((
            MeterKind::Nvml {
                selectors: vec![],
                counter_ms: None
            },
            Some(20)
        ))
    );
    assert_eq!(
        q("nvml,period_ms=20"),
        Ok((
            MeterKind::Nvml {
                selectors: vec![],
                counter_ms: None
            },
            Some(20)
        ))
    );
    assert_eq!(
        q("sim:300,period_ms=100"),
        Ok((MeterKind::Sim { watts: 300.0 }, Some(100)))
    );
    // Among a counter file's options, in any order; a comma in the path survives.
    assert_eq!(
        q("counter-file:/a,b/e,period_ms=100,unit=mj"),
        Ok((
            MeterKind::CounterFile {
                path: "/a,b/e".into(),
                unit: Unit::Millijoules,
                wrap: None
            },
            Some(100)
        ))
    );
    assert_eq!(
        q("replay:/t.csv,period_ms=60000"),
        Ok((
            MeterKind::Replay {
                path: "/t.csv".into()
            },
            Some(60_000)
        ))
    );
    for bad in ["0", "60001", "-5", "1.5", "", "x"] {
        assert_eq!(
            q(&format!("sim:1,period_ms={bad}")),
            Err(SpecError::BadPeriod(bad.into())),
            "{bad}"
        );
        assert_eq!(
            q(&format!("counter-file:/e,period_ms={bad}")),
            Err(SpecError::BadPeriod(bad.into()))
        );
    }
    assert_eq!(
        q("counter-file:/e,period_ms=5,period_ms=6"),
        Err(SpecError::DuplicateOption("period_ms=5".into()))
    );
    assert_eq!(q(",period_ms=5"), Err(SpecError::Empty));
}

#[test]
fn a_spec_period_reaches_its_devices() {
    let specs: Vec<MeterSpec> = ["sim:1,period_ms=100", "sim:2"]
        .iter()
        .map(|s| s.parse().expect("spec"))
        .collect();
    let set = crate::meter::build_meters(&specs).expect("sim builds");
    let periods: Vec<Option<u64>> = set
        .meters
        .iter()
        .map(|m| m.devices()[0].period_ns)
        .collect();
    assert_eq!(periods, [Some(100_000_000), None]);
}
