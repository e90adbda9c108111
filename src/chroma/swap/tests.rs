use super::*;

fn entry(drop_previous: bool) -> SwapEntry {
    SwapEntry {
        operation: "restore".into(),
        target: "docs".into(),
        previous: "docs-pre".into(),
        staging: "docs-stage".into(),
        old_id: "OLD".into(),
        new_id: "NEW".into(),
        drop_previous,
        started_at: String::new(),
        runner: String::new(),
        host: String::new(),
        pid: 0,
        process: String::new(),
    }
}

fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(id, n)| ((*id).to_string(), (*n).to_string()))
        .collect()
}

fn rename(id: &str, to: &str) -> Step {
    Step::Rename {
        id: id.into(),
        to: to.into(),
    }
}

/// Applies steps until done; the names it ends with.
fn settle(
    e: &SwapEntry,
    mut n: HashMap<String, String>,
    dir: Direction,
) -> (HashMap<String, String>, Step) {
    for _ in 0..MAX_STEPS {
        match next_step(e, &n, dir) {
            Step::Rename { id, to } => {
                n.insert(id, to);
            }
            Step::DropPrevious { name } => n.retain(|_, v| *v != name),
            last => return (n, last),
        }
    }
    panic!("no settled state");
}

#[test]
fn forward_goes_through_both_renames_then_drops_the_previous() {
    let e = entry(true);
    let start = names(&[("OLD", "docs"), ("NEW", "docs-stage")]);
    assert_eq!(
        next_step(&e, &start, Direction::Forward),
        rename("OLD", "docs-pre")
    );
    let between = names(&[("OLD", "docs-pre"), ("NEW", "docs-stage")]);
    assert_eq!(
        next_step(&e, &between, Direction::Forward),
        rename("NEW", "docs")
    );
    let swapped = names(&[("OLD", "docs-pre"), ("NEW", "docs")]);
    assert_eq!(
        next_step(&e, &swapped, Direction::Forward),
        Step::DropPrevious {
            name: "docs-pre".into()
        }
    );
    let (end, last) = settle(&e, start, Direction::Forward);
    assert_eq!(last, Step::Done);
    assert_eq!(end, names(&[("NEW", "docs")]));
    // Kept when asked, and a finished swap is done.
    assert_eq!(
        next_step(&entry(false), &swapped, Direction::Forward),
        Step::Done
    );
}

#[test]
fn a_crash_between_the_renames_is_finished_not_left_without_the_name() {
    let e = entry(false);
    let between = names(&[("OLD", "docs-pre"), ("NEW", "docs-stage"), ("X", "other")]);
    let (end, last) = settle(&e, between, Direction::Forward);
    assert_eq!(last, Step::Done);
    assert_eq!(end.get("NEW").map(String::as_str), Some("docs"));
    assert_eq!(end.get("OLD").map(String::as_str), Some("docs-pre"));
}

#[test]
fn without_the_new_collection_the_old_one_gets_its_name_back() {
    let e = entry(true);
    let between = names(&[("OLD", "docs-pre")]);
    assert_eq!(
        next_step(&e, &between, Direction::Forward),
        rename("OLD", "docs")
    );
    let (end, last) = settle(&e, between, Direction::Forward);
    assert_eq!((end, last), (names(&[("OLD", "docs")]), Step::Done));
    // Neither exists: nothing to do.
    assert_eq!(next_step(&e, &names(&[]), Direction::Forward), Step::Done);
}

#[test]
fn back_undoes_either_rename() {
    let e = entry(true);
    for start in [
        names(&[("OLD", "docs-pre"), ("NEW", "docs-stage")]),
        names(&[("OLD", "docs-pre"), ("NEW", "docs")]),
        names(&[("OLD", "docs"), ("NEW", "docs-stage")]),
    ] {
        let (end, last) = settle(&e, start, Direction::Back);
        assert_eq!(last, Step::Done);
        assert_eq!(end, names(&[("OLD", "docs"), ("NEW", "docs-stage")]));
    }
}

#[test]
fn a_name_taken_by_a_third_collection_is_never_renamed_onto() {
    let e = entry(true);
    // A client created an empty `docs` in the window.
    let n = names(&[("OLD", "docs-pre"), ("NEW", "docs-stage"), ("X", "docs")]);
    assert!(matches!(next_step(&e, &n, Direction::Forward), Step::Stuck(w) if w.contains("X")));
    assert!(matches!(next_step(&e, &n, Direction::Back), Step::Stuck(_)));
    let n = names(&[("OLD", "docs"), ("NEW", "docs-stage"), ("X", "docs-pre")]);
    assert!(matches!(
        next_step(&e, &n, Direction::Forward),
        Step::Stuck(_)
    ));
}

/// `exchange`'s two entries, driven forward in either order (as
/// `recover`'s passes do), end with the names exchanged from every state
/// a crash can leave; neither renames onto a name in use.
#[test]
fn an_exchange_recovers_from_every_state_between_its_renames() {
    let first = SwapEntry::new("swap_collections", "a", "a.swap-tmp", "b", "A", "B", false);
    let second = SwapEntry::new("swap_collections", "b", "a", "a.swap-tmp", "B", "A", false);
    let states = [
        [("A", "a"), ("B", "b")],
        [("A", "a.swap-tmp"), ("B", "b")],
        [("A", "a.swap-tmp"), ("B", "a")],
        [("A", "b"), ("B", "a")],
    ];
    for order in [[&first, &second], [&second, &first]] {
        for (i, state) in states.iter().enumerate() {
            let mut now = names(state);
            for e in [order[0], order[1], order[0], order[1]] {
                while let Step::Rename { id, to } = next_step(e, &now, Direction::Forward) {
                    assert!(!now.values().any(|n| *n == to), "{to} is in use");
                    now.insert(id, to);
                }
            }
            assert_eq!(now, names(&[("A", "b"), ("B", "a")]), "from state {i}");
        }
    }
}

#[test]
fn a_running_swap_of_this_process_is_alive_and_a_made_up_runner_is_not() {
    let mut e = SwapEntry::new("restore", "a", "b", "c", "1", "2", false);
    assert!(!e.process.is_empty(), "{e:?}");
    // This process's own entry counts as running only while its swap runs.
    assert!(!runner_alive(&e), "{e:?}");
    {
        let _running = InFlight::enter(&e);
        assert!(runner_alive(&e), "{e:?}");
    }
    assert!(!runner_alive(&e));
    // Another live process on this host (the parent, e.g. cargo).
    let parent = std::os::unix::process::parent_id();
    let other = SwapEntry {
        pid: parent,
        process: process_identity(parent).unwrap_or_default(),
        ..e.clone()
    };
    assert!(runner_alive(&other), "{other:?}");
    e.process = format!("{}x", e.process);
    assert!(!runner_alive(&e));
    // Another host's runner cannot be asked: left alone while the entry
    // is young, taken as crashed once it is older than the grace.
    e.host = "elsewhere".into();
    assert!(runner_alive(&e), "{e:?}");
    e.started_at = (chrono::Utc::now() - chrono::Duration::minutes(10))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert!(!runner_alive(&e));
}
