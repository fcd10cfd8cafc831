"""Contract section 6: start_tasks claims queued tasks, builds their input, extends visibility."""

from __future__ import annotations

from contract_helpers import (
    Conn,
    assert_recent,
    assert_visible_after,
    complete_task,
    define_flow,
    fail_task,
    map_step,
    read_and_start,
    read_messages,
    register_worker,
    seconds_until_visible,
    server_clock,
    single,
    start_flow,
    start_tasks,
    task,
    tasks,
)


def test_root_single_step_gets_empty_input_and_flow_input(conn: Conn) -> None:
    define_flow(conn, "root_single", [single("a")])
    worker = register_worker(conn, "root_single")
    run = start_flow(conn, "root_single", {"user": 7, "tags": ["x"]})
    (record,) = read_and_start(conn, "root_single", worker)
    assert record["flow_slug"] == "root_single"
    assert record["run_id"] == run["run_id"]
    assert record["step_slug"] == "a"
    assert record["task_index"] == 0
    assert record["input"] == {}
    assert record["flow_input"] == {"user": 7, "tags": ["x"]}
    assert record["msg_id"] == task(conn, run["run_id"], "a")["message_id"]


def test_record_has_the_step_task_record_columns(conn: Conn) -> None:
    define_flow(conn, "columns", [single("a")])
    worker = register_worker(conn, "columns")
    start_flow(conn, "columns", {})
    (record,) = read_and_start(conn, "columns", worker)
    assert list(record) == [
        "flow_slug",
        "run_id",
        "step_slug",
        "input",
        "msg_id",
        "task_index",
        "flow_input",
    ]


def test_dependent_single_step_gets_dependency_outputs(conn: Conn) -> None:
    define_flow(conn, "dependent", [single("a"), single("b"), single("c", "a", "b")])
    worker = register_worker(conn, "dependent")
    run = start_flow(conn, "dependent", {"ignored": True})
    claimed = read_and_start(conn, "dependent", worker)
    assert [r["step_slug"] for r in claimed] == ["a", "b"]
    complete_task(conn, run["run_id"], "a", 0, {"x": 1})
    complete_task(conn, run["run_id"], "b", 0, [1, None])
    (record,) = read_and_start(conn, "dependent", worker)
    assert record["step_slug"] == "c"
    assert record["input"] == {"a": {"x": 1}, "b": [1, None]}
    assert record["flow_input"] is None


def test_dependent_step_input_leaves_out_skipped_dependencies(conn: Conn) -> None:
    define_flow(
        conn,
        "partial",
        [
            single("maybe", required={"go": True}, when_unmet="skip"),
            single("always"),
            single("after", "maybe", "always"),
        ],
    )
    worker = register_worker(conn, "partial")
    run = start_flow(conn, "partial", {"go": False})
    (record,) = read_and_start(conn, "partial", worker)
    assert record["step_slug"] == "always"
    complete_task(conn, run["run_id"], "always", 0, "done")
    (record,) = read_and_start(conn, "partial", worker)
    assert record["step_slug"] == "after"
    assert record["input"] == {"always": "done"}


def test_root_map_tasks_get_their_element(conn: Conn) -> None:
    define_flow(conn, "root_map", [map_step("each")])
    worker = register_worker(conn, "root_map")
    elements = [1, {"k": "v"}, None, "s", [2, 3]]
    start_flow(conn, "root_map", elements)
    claimed = read_and_start(conn, "root_map", worker)
    assert [r["task_index"] for r in claimed] == [0, 1, 2, 3, 4]
    assert [r["input"] for r in claimed] == elements
    assert all(r["flow_input"] is None for r in claimed)


def test_dependent_map_tasks_get_elements_of_parent_output(conn: Conn) -> None:
    define_flow(conn, "dep_map", [single("list"), map_step("each", "list")])
    worker = register_worker(conn, "dep_map")
    run = start_flow(conn, "dep_map", {})
    read_and_start(conn, "dep_map", worker)
    complete_task(conn, run["run_id"], "list", 0, ["a", {"b": 2}, 3])
    claimed = read_and_start(conn, "dep_map", worker)
    assert [(r["step_slug"], r["task_index"], r["input"]) for r in claimed] == [
        ("each", 0, "a"),
        ("each", 1, {"b": 2}),
        ("each", 2, 3),
    ]
    assert all(r["flow_input"] is None for r in claimed)


def test_map_over_map_tasks_get_elements_of_parent_map_output(conn: Conn) -> None:
    define_flow(conn, "map_map", [map_step("first"), map_step("second", "first")])
    worker = register_worker(conn, "map_map")
    start_flow(conn, "map_map", [1, 2])
    first = read_and_start(conn, "map_map", worker)
    for record in first:
        complete_task(conn, record["run_id"], "first", record["task_index"], record["input"] * 10)
    second = read_and_start(conn, "map_map", worker)
    assert [(r["step_slug"], r["input"]) for r in second] == [("second", 10), ("second", 20)]


def test_claim_marks_task_started(conn: Conn) -> None:
    define_flow(conn, "claimed", [single("a")])
    worker = register_worker(conn, "claimed")
    run = start_flow(conn, "claimed", {})
    read_and_start(conn, "claimed", worker)
    started = task(conn, run["run_id"], "a")
    assert started["status"] == "started"
    assert started["attempts_count"] == 1
    assert started["last_worker_id"] == worker
    assert_recent(conn, started["started_at"])


def test_visibility_extended_to_step_timeout_plus_two_seconds(conn: Conn) -> None:
    define_flow(conn, "vt_step", [single("slow", timeout=100)], timeout=20)
    worker = register_worker(conn, "vt_step")
    start_flow(conn, "vt_step", {})
    # a short read vt, so only start_tasks can push the message as far as 102 s
    (message,) = read_messages(conn, "vt_step", vt=1)
    assert seconds_until_visible(conn, "vt_step", message["msg_id"]) <= 1
    before = server_clock(conn)
    start_tasks(conn, "vt_step", [message["msg_id"]], worker)
    after = server_clock(conn)
    assert_visible_after(conn, "vt_step", message["msg_id"], 102, before, after)


def test_visibility_extended_to_flow_timeout_when_step_has_none(conn: Conn) -> None:
    define_flow(conn, "vt_flow", [map_step("each")], timeout=40)
    worker = register_worker(conn, "vt_flow")
    start_flow(conn, "vt_flow", [1, 2, 3])
    messages = read_messages(conn, "vt_flow", vt=1)
    before = server_clock(conn)
    start_tasks(conn, "vt_flow", [m["msg_id"] for m in messages], worker)
    after = server_clock(conn)
    for message in messages:
        assert_visible_after(conn, "vt_flow", message["msg_id"], 42, before, after)


def test_tasks_already_started_are_skipped(conn: Conn) -> None:
    define_flow(conn, "once", [single("a")])
    worker = register_worker(conn, "once")
    run = start_flow(conn, "once", {})
    (message,) = read_messages(conn, "once")
    assert len(start_tasks(conn, "once", [message["msg_id"]], worker)) == 1
    assert start_tasks(conn, "once", [message["msg_id"]], worker) == []
    assert task(conn, run["run_id"], "a")["attempts_count"] == 1


def test_completed_tasks_are_skipped(conn: Conn) -> None:
    define_flow(conn, "done_once", [single("a"), single("b")])
    worker = register_worker(conn, "done_once")
    run = start_flow(conn, "done_once", {})
    claimed = read_and_start(conn, "done_once", worker)
    complete_task(conn, run["run_id"], "a", 0, 1)
    again = start_tasks(conn, "done_once", [r["msg_id"] for r in claimed], worker)
    assert again == []
    assert task(conn, run["run_id"], "a")["status"] == "completed"


def test_tasks_of_failed_run_are_skipped(conn: Conn) -> None:
    define_flow(conn, "doomed", [single("bad", max_attempts=1), single("other")])
    worker = register_worker(conn, "doomed")
    run = start_flow(conn, "doomed", {})
    messages = read_messages(conn, "doomed", vt=1)
    other_msg = task(conn, run["run_id"], "other")["message_id"]
    start_tasks(
        conn,
        "doomed",
        [m["msg_id"] for m in messages if m["msg_id"] != other_msg],
        worker,
    )
    fail_task(conn, run["run_id"], "bad", 0, "boom")
    assert start_tasks(conn, "doomed", [other_msg], worker) == []
    assert task(conn, run["run_id"], "other")["status"] == "cancelled"


def test_unknown_message_ids_claim_nothing(conn: Conn) -> None:
    define_flow(conn, "strangers", [single("a")])
    worker = register_worker(conn, "strangers")
    start_flow(conn, "strangers", {})
    assert start_tasks(conn, "strangers", [987654321], worker) == []
    assert start_tasks(conn, "strangers", [], worker) == []


def test_only_the_given_messages_are_claimed(conn: Conn) -> None:
    define_flow(conn, "subset", [map_step("each")])
    worker = register_worker(conn, "subset")
    run = start_flow(conn, "subset", [1, 2, 3])
    by_index = {t["task_index"]: t["message_id"] for t in tasks(conn, run["run_id"])}
    claimed = start_tasks(conn, "subset", [by_index[1]], worker)
    assert [r["task_index"] for r in claimed] == [1]
    statuses = {t["task_index"]: t["status"] for t in tasks(conn, run["run_id"])}
    assert statuses == {0: "queued", 1: "started", 2: "queued"}


def test_run_input_reaches_root_step_across_many_runs(conn: Conn) -> None:
    define_flow(conn, "per_run", [single("a")])
    worker = register_worker(conn, "per_run")
    runs = {start_flow(conn, "per_run", {"n": n})["run_id"]: n for n in range(5)}
    claimed = read_and_start(conn, "per_run", worker)
    assert {r["run_id"]: r["flow_input"]["n"] for r in claimed} == runs
