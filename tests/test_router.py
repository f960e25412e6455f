"""The router on an explicit clock: routes, incidents, group_wait / group_interval / repeat,
escalation, resolution, notice keys and saved state."""

from __future__ import annotations

from mqtt_anomaly.messages import Alert
from mqtt_anomaly.routeconf import Route
from mqtt_anomaly.routing.router import Router
from mqtt_anomaly.statefile import decode, encode


def alert(sid: str, state: str = "raised", det: str = "zscore", sev: str = "warning") -> Alert:
    ts = 1000.0
    return Alert(
        sid, det, sev, state, 5.0, 0.7, None, 1.0, 2.0, ts, ts, "m", f"{sid}:{det}:{state}"
    )  # type: ignore[arg-type]


def route(**kw: object) -> Route:
    return Route.model_validate({"receivers": ["ops"], **kw})


def test_one_notice_per_incident_after_group_wait() -> None:
    r = Router([route(group_wait=10)])
    r.feed([alert("S1"), alert("S2")], 0.0)
    r.feed([alert("S3")], 4.0)
    assert r.next_due(4.0) == 10.0
    assert r.due(9.99) == []
    (n,) = r.due(10.0)
    assert n.status == "firing" and n.severity == "warning"
    assert sorted(a.sensor_id for a in n.alerts) == ["S1", "S2", "S3"]
    assert n.group == {"route": "route-0", "detector": "zscore", "group": ""}
    assert n.receivers == ["ops"]
    assert r.incidents == 1


def test_group_by_splits_incidents_by_tag() -> None:
    tags = {"S1": {"asset": "press-1"}, "S2": {"asset": "press-2"}, "S3": {"asset": "press-1"}}
    r = Router([route(group_wait=0, group_by=["asset"])], tags_of=tags.get)
    r.feed([alert("S1"), alert("S2"), alert("S3")], 0.0)
    notices = r.due(0.0)
    assert sorted((n.group["asset"], len(n.alerts)) for n in notices) == [
        ("press-1", 2),
        ("press-2", 1),
    ]
    assert notices[0].alerts[0].labels["asset"] in ("press-1", "press-2")


def test_changes_wait_for_group_interval_and_unchanged_repeat() -> None:
    r = Router([route(group_wait=0, group_interval=60, repeat_interval=600)])
    r.feed([alert("S1")], 0.0)
    (first,) = r.due(0.0)
    r.feed([alert("S2")], 5.0)
    assert r.next_due(5.0) == 60.0 and r.due(59.0) == []
    (second,) = r.due(60.0)
    assert len(second.alerts) == 2 and second.key != first.key
    assert r.next_due(60.0) == 660.0  # nothing changed: the repeat
    (repeat,) = r.due(660.0)
    assert [a.sensor_id for a in repeat.alerts] == [a.sensor_id for a in second.alerts]
    assert repeat.key != second.key  # a repeat is not the same notice again
    assert repeat.valid_until == 660.0 + 1200.0


def test_cleared_alerts_resolve_the_incident_then_it_closes() -> None:
    r = Router([route(group_wait=0, group_interval=30)])
    r.feed([alert("S1"), alert("S2")], 0.0)
    r.due(0.0)
    r.feed([alert("S1", "cleared")], 10.0)
    (partial,) = r.due(30.0)
    assert partial.status == "firing"
    assert {(a.sensor_id, a.status) for a in partial.alerts} == {
        ("S1", "resolved"),
        ("S2", "firing"),
    }
    r.feed([alert("S2", "cleared")], 40.0)
    (done,) = r.due(60.0)
    assert done.status == "resolved" and [a.sensor_id for a in done.alerts] == ["S2"]
    assert done.alerts[0].ends_at == 1000.0
    assert r.incidents == 0 and r.next_due(60.0) is None


def test_a_spike_that_cleared_before_the_first_notice_is_still_sent_resolved() -> None:
    r = Router([route(group_wait=10)])
    r.feed([alert("S1", sev="critical", det="threshold")], 0.0)
    r.feed([alert("S1", "cleared", sev="critical", det="threshold")], 3.0)
    (n,) = r.due(10.0)
    assert n.status == "resolved" and n.severity == "critical"
    assert r.incidents == 0


def test_a_held_warning_escalates_to_critical() -> None:
    r = Router([route(group_wait=0, group_interval=5, escalate_after=120)])
    r.feed([alert("S1")], 0.0)
    (first,) = r.due(0.0)
    assert first.severity == "warning"
    assert r.next_due(1.0) == 120.0
    assert r.due(119.9) == []
    (esc,) = r.due(120.0)
    assert esc.severity == "critical"
    (a,) = esc.alerts
    assert a.escalated and a.raised_severity == "warning" and a.labels["severity"] == "critical"


def test_routes_first_match_wins_unless_continue() -> None:
    routes = [
        route(name="crit", severity=["critical"], group_wait=0, receivers=["pager"]),
        route(name="line1", sensors=["line-1-*"], group_wait=0, **{"continue": True}),
        route(name="all", group_wait=0, receivers=["archive"]),
    ]
    r = Router(routes)
    r.feed([alert("x", sev="critical"), alert("line-1-T1"), alert("line-2-T1")], 0.0)
    got = sorted((n.route, a.sensor_id) for n in r.due(0.0) for a in n.alerts)
    assert got == [
        ("all", "line-1-T1"),
        ("all", "line-2-T1"),
        ("crit", "x"),
        ("line1", "line-1-T1"),
    ]
    assert r.routed == 3 and r.unrouted == 0
    r2 = Router([route(detectors=["threshold"])])
    r2.feed([alert("S1")], 0.0)
    assert r2.unrouted == 1 and r2.incidents == 0


def test_notice_keys_are_deterministic() -> None:
    def run() -> list[str]:
        r = Router([route(group_wait=0)])
        r.feed([alert("S1"), alert("S2")], 0.0)
        return [n.key for n in r.due(0.0)]

    assert run() == run()


def test_open_incidents_survive_a_restart_through_the_state_file() -> None:
    r = Router([route(group_wait=0, group_interval=10)])
    r.feed([alert("S1"), alert("S2")], 0.0)
    r.due(0.0)
    r.feed([alert("S1", "cleared")], 1.0)
    saved = decode(b"".join(bytes(p) for p in encode(r.state_dict())))
    back = Router([route(group_wait=0, group_interval=10)])
    assert back.load_state_dict(saved) == 1
    back.feed([alert("S2", "cleared")], 2.0)
    (n,) = back.due(10.0)
    assert n.status == "resolved"
    assert sorted(a.sensor_id for a in n.alerts) == ["S1", "S2"]
    other = Router([route(name="renamed")])
    assert other.load_state_dict(saved) == 0  # a route that no longer exists is left out


def test_doctests() -> None:
    import doctest

    from mqtt_anomaly import routeconf
    from mqtt_anomaly.routing import router

    for module in (router, routeconf):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_suppressed_raises_reach_nobody_but_clears_still_resolve() -> None:
    import msgspec

    r = Router([route(group_wait=0)])
    r.feed([msgspec.structs.replace(alert("S1"), suppressed="maintenance: relining")], 0.0)
    assert r.incidents == 0 and r.suppressed == 1 and r.due(0.0) == []
    r.feed([alert("S2")], 1.0)
    r.due(1.0)
    r.feed([msgspec.structs.replace(alert("S2", "cleared"), suppressed="gate: press off")], 2.0)
    (n,) = r.due(100.0)
    assert n.status == "resolved"


def test_a_flood_is_one_notice_listing_at_most_max_alerts() -> None:
    r = Router([route(group_wait=0, group_interval=1, max_alerts=100)])
    crit = [alert(f"C{i}", sev="critical") for i in range(5)]
    r.feed([*(alert(f"S{i}") for i in range(245)), *crit], 0.0)
    (n,) = r.due(0.0)
    assert (len(n.alerts), n.firing, n.resolved, n.truncated) == (100, 250, 0, True)
    assert {a.sensor_id for a in n.alerts[:5]} == {f"C{i}" for i in range(5)}  # the worst first
    assert n.summary.startswith("[CRITICAL] 250 firing: route-0")
    r.feed([alert(f"S{i}", "cleared") for i in range(150)], 0.5)
    (m,) = r.due(1.0)
    assert (m.firing, m.resolved, len(m.alerts)) == (100, 150, 100)
    assert all(a.status == "resolved" for a in m.alerts)  # the resolved first
