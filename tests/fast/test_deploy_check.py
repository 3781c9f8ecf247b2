"""`homeserver deploy-check`: HAProxy's room routing (deploy/haproxy.cfg) against the config's
`workers.event_writers`. A mismatch breaks nothing visible (the worker that gets a room's write
forwards it), so this check is what shows it: each way it can be wrong is named, with the lines
to use, and the shipped file passes for the shipped example (w1, w2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from homeserver.cli import main
from homeserver.workers.haproxy_check import check, routes

SHIPPED = (Path(__file__).parents[2] / "deploy" / "haproxy.cfg").read_text()


def test_the_shipped_file_routes_to_the_two_writers_it_names() -> None:
    assert check(SHIPPED, ["w1", "w2"]) == []


def test_a_third_writer_a_swapped_order_and_no_routing_are_named() -> None:
    assert check(SHIPPED, ["w1", "w2", "w4"]) == [
        "mod(2), but workers.event_writers has 3",
        "room_writer 2: no use-server line, but workers.event_writers[2] is w4",
    ]
    assert check(SHIPPED, ["w2", "w1"]) == [
        "room_writer 0: use-server w1, but workers.event_writers[0] is w2",
        "room_writer 1: use-server w2, but workers.event_writers[1] is w1",
    ]
    assert check(SHIPPED, ["w1"]) == [
        "mod(2), but workers.event_writers has 1",
        "room_writer 1: use-server w2, but workers.event_writers[1] is nothing (no such writer)",
    ]
    no_routing = "\n".join(line for line in SHIPPED.splitlines() if "room_writer" not in line)
    assert check(no_routing, ["w1", "w2"])[0].startswith("no room routing")


def test_the_lines_it_prints_make_a_file_that_passes() -> None:
    writers = ["a", "b", "c"]
    lines = routes(writers)
    fixed = "\n".join(
        lines[0] if "set-var(txn.room_writer)" in line else line
        for line in SHIPPED.splitlines()
        if not line.strip().startswith("use-server")
    )
    assert check(fixed + "\n" + "\n".join(lines[1:]), writers) == []


def test_the_command_exits_1_naming_the_mismatch(tmp_path: Path, capsys: Any) -> None:
    conf = tmp_path / "homeserver.yaml"
    instances = {f"w{i}": {"listen": f"127.0.0.1:810{i}", "internal": f"127.0.0.1:910{i}"} for i in (1, 2, 3)}
    workers = {"redis_url": "redis://127.0.0.1:6379/0", "secret": "s" * 32, "instances": instances}
    raw: dict[str, Any] = {
        "server_name": "t.test",
        "database": {"url": "postgresql://hs@127.0.0.1:5432/hs"},
        "workers": {**workers, "event_writers": ["w1", "w2"]},
    }
    conf.write_text(yaml.safe_dump(raw))
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(SHIPPED)
    main(["deploy-check", "-c", str(conf), "--haproxy", str(cfg)])
    assert "room writes routed to w1, w2" in capsys.readouterr().out

    raw["workers"]["event_writers"] = ["w1", "w2", "w3"]
    conf.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as exited:
        main(["deploy-check", "-c", str(conf), "--haproxy", str(cfg)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "mod(2), but workers.event_writers has 3" in err
    assert "use-server w3 if { var(txn.room_writer) -m int 2 }" in err

    # A file that is not there: named, no traceback.
    with pytest.raises(SystemExit) as exited:
        main(["deploy-check", "-c", str(conf), "--haproxy", str(tmp_path / "missing.cfg")])
    assert exited.value.code == 1
    assert "missing.cfg: cannot be read" in capsys.readouterr().err
