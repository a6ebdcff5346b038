"""Several people on one app: each session (or logged-in user) owns its images and its training job.

A hostile tester's second client deleted the first one's gallery image and cancelled its training; unnamed
handlers could be driven by fn_index. Now deleting and cancelling are for the owner only, a private gallery shows
each caller their own images, and every handler, named or not, goes through the same check (docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from gradio_client import Client

from brandgen.errors import InvalidInput
from brandgen.export import export_items
from brandgen.gallery import GalleryStore
from brandgen.manager import PipelineManager
from brandgen.ownership import ENV_PRIVATE, Access, Sessions, owner_key, private_gallery
from brandgen.training.jobs import TrainingJobs
from brandgen.ui.app import build_app
from conftest import free_port
from test_robustness_ui import GOOD, _handler
from training_helpers import brand_image, make_dataset, one_torch_thread  # noqa: F401 (autouse fixture)

SLOTS = ["(none)", 0.8] * 3
ALICE, BOB = owner_key(None, "alice-session"), owner_key(None, "bob-session")


@pytest.fixture(autouse=True)
def _shared_gallery(monkeypatch: pytest.MonkeyPatch):
    """Each test says whether the gallery is private; none inherits it from the machine."""
    for name in (ENV_PRIVATE, "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)


def test_owner_keys_and_when_the_gallery_is_private(monkeypatch: pytest.MonkeyPatch):
    assert owner_key("ana", "s1") == owner_key("ana", "s2") != owner_key(None, "s1")  # a user, across sessions
    assert owner_key(None, None) is None and "s1" not in owner_key(None, "s1")  # a hash, never the session id
    assert not private_gallery(False) and private_gallery(True)  # a login makes it private
    monkeypatch.setenv("SPACE_ID", "acme/brandgen")
    assert private_gallery(False)
    monkeypatch.setenv(ENV_PRIVATE, "0")
    assert not private_gallery(True)  # the operator's explicit choice wins


def test_images_belong_to_their_owner(tmp_path: Path):
    store = GalleryStore(tmp_path / "outputs")
    sessions = Sessions()
    alice, bob = (sessions.access(None, s) for s in ("alice-session", "bob-session"))
    mine = store.add(brand_image(32), {"user_prompt": "alice star", "model": "m"}, owner=alice.owner)
    theirs = store.add(brand_image(32, 2), {"user_prompt": "bob ring", "model": "n"}, owner=bob.owner)
    old = store.add(brand_image(32, 3), {"user_prompt": "before owners", "model": "m"})  # no owner recorded
    with pytest.raises(InvalidInput, match="made in another browser session or by another user"):
        store.delete(mine.id, bob)
    assert {i.id for i in store.search(access=bob).items} == {mine.id, theirs.id, old.id}  # shared gallery
    private_alice, private_bob = (Access(a.owner, True, sessions.released) for a in (alice, bob))
    assert [i.id for i in store.search(access=private_alice).items] == [mine.id]
    assert store.facets(private_bob)["models"] == ["n"]
    with pytest.raises(InvalidInput, match=f"No gallery image {mine.id}"):  # as if it did not exist
        store.get(mine.id, private_bob)
    with pytest.raises(InvalidInput, match=f"No gallery image {mine.id}"):
        export_items(store, [theirs.id, mine.id], ["png"], ["1x"], access=private_bob)
    with pytest.raises(InvalidInput, match="No gallery image"):
        store.delete(old.id, private_bob)  # unowned images are no one's in a private gallery
    store.delete(old.id, bob)  # but anyone's on a shared one
    store.rebuild_index()  # owners live in the PNGs too: a rebuilt index still knows them
    assert [i.id for i in store.search(access=private_alice).items] == [mine.id]
    sessions.ended(alice.owner)  # Alice closed or reloaded her tab
    with pytest.raises(InvalidInput, match="No gallery image"):
        store.delete(mine.id, private_bob)  # private: her images stay hers
    store.delete(mine.id, bob)  # shared: what an ended session left goes back to whoever uses the app
    store.delete(theirs.id, bob)
    assert len(store) == 0


def test_an_older_index_without_owners_opens_and_its_images_have_none(tmp_path: Path):
    store = GalleryStore(tmp_path / "outputs")
    item = store.add(brand_image(32), {"user_prompt": "old star"})
    store.close()
    with sqlite3.connect(store.index_path) as conn:  # the schema before owners were kept
        conn.executescript("ALTER TABLE items DROP COLUMN owner")
    reopened = GalleryStore(tmp_path / "outputs")
    assert reopened.get(item.id).owner is None and not reopened.problems
    assert reopened.add(brand_image(32), {}, owner=ALICE).owner == ALICE


def _start(jobs: TrainingJobs, tmp_path: Path, owner: str | None, steps: int = 400):
    from brandgen.training.config import TrainConfig

    data = make_dataset(tmp_path / "data", count=2)
    config = TrainConfig(name="alice-brand", base_model="tiny-sd15", asset_type="icons", data_dir=str(data),
                         resolution=32, rank=4, alpha=4, lr=1e-3, max_steps=steps, checkpoint_every=1,
                         allow_small_dataset=True)
    return jobs.start(config, owner=owner)


def test_only_the_jobs_owner_cancels_or_resumes_it(manager: PipelineManager, tmp_path: Path):
    jobs = TrainingJobs(manager)
    state = _start(jobs, tmp_path, ALICE)
    deadline = time.monotonic() + 120
    while (s := jobs.status()).status != "running" or s.step < 1:
        assert time.monotonic() < deadline and s.status in ("queued", "running"), s
        time.sleep(0.05)
    with pytest.raises(InvalidInput, match="'alice-brand' was started in another browser session"):
        jobs.cancel(access=Access(BOB))
    assert jobs.status().status == "running"
    assert jobs.cancel(access=Access(ALICE)).status == "cancelling"
    final = jobs.wait(timeout=120)
    assert final.status == "cancelled" and (Path(state.run_dir) / "owner").read_text() == ALICE
    run = Path(state.run_dir).name
    assert [r["run"] for r in jobs.list_runs(Access(BOB, private=True))] == []
    assert [r["run"] for r in jobs.list_runs(Access(BOB))] == [run]
    with pytest.raises(InvalidInput, match="only they can resume it"):
        jobs.resume(run, Access(BOB))
    resumed = jobs.resume(run, Access(ALICE))
    assert resumed.id == run and jobs.owner() == ALICE
    jobs.cancel()  # the operator (CLI, scripts) may always
    assert jobs.wait(timeout=120).status == "cancelled"


# ----- the served app ----------------------------------------------------------------------------------
@pytest.fixture
def served(manager: PipelineManager):
    demo = build_app(manager)
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=free_port(),
                                                   prevent_thread_lock=True, quiet=True)
    try:
        yield demo
    finally:
        demo.close()


def _generate(client: Client, prompt: str) -> str:
    values = {**GOOD, "prompt": prompt, "count": 1}
    _, metadata, _, _ = client.predict(*values.values(), *SLOTS, api_name="/generate")
    return metadata[0]["gallery_id"]


def _by_fn_index(demo: gr.Blocks, session: str, fn_name: str, data: list) -> dict:
    """Run an unnamed handler (api_name=False) the way a hand-made HTTP client can: by its fn_index."""
    index = next(i for i, dep in demo.fns.items() if dep.fn is not None and dep.fn.__name__ == fn_name)
    body = json.dumps({"data": data, "fn_index": index, "session_hash": session, "event_data": None}).encode()
    join = urllib.request.Request(f"{demo.local_url}gradio_api/queue/join", body,
                                  {"Content-Type": "application/json"})
    urllib.request.urlopen(join, timeout=30).close()
    with urllib.request.urlopen(f"{demo.local_url}gradio_api/queue/data?session_hash={session}",
                                timeout=60) as stream:
        for line in stream:
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    return message
    raise AssertionError("no answer")


def test_a_second_client_cannot_delete_or_cancel_the_firsts_work(served, manager: PipelineManager,
                                                                 monkeypatch: pytest.MonkeyPatch):
    alice, bob = Client(served.local_url, verbose=False), Client(served.local_url, verbose=False)
    image = _generate(alice, "a teal heart icon")
    with pytest.raises(Exception, match="made in another browser session or by another user"):
        bob.predict(image, True, api_name="/gallery_delete")
    answer = _by_fn_index(served, "bob-raw", "on_delete", [image, True, "", "(all)", "(all)", "(all)", 1])
    assert not answer["success"] and "made in another browser session" in answer["output"]["error"]
    assert bob.predict(image, api_name="/gallery_item")["id"] == image  # shared gallery: Bob may look

    monkeypatch.setenv(ENV_PRIVATE, "1")  # a shared app: each caller sees their own images only
    own = _generate(bob, "a blue ring icon")
    listed = bob.predict("", None, None, None, 1, 48, api_name="/gallery_search")
    assert [i["id"] for i in listed["items"]] == [own]
    assert [i["id"] for i in alice.predict("", None, None, None, 1, 48, api_name="/gallery_search")["items"]] == [
        image]
    with pytest.raises(Exception, match=f"No gallery image {image}"):
        bob.predict(image, api_name="/gallery_item")
    page = _by_fn_index(served, "bob-raw", "first_page", ["", "(all)", "(all)", "(all)"])
    assert page["success"] and page["output"]["data"][2].endswith("0 image(s)")  # not Alice's, by fn_index
    with pytest.raises(Exception, match="memory mode is the same for everyone"):
        _handler(served, "on_memory")("model_offload", False, SimpleNamespace(session_hash="x", username=None))
    assert bob.predict(own, True, api_name="/gallery_delete") == f"Deleted {own}."
    assert GalleryStore(manager.paths.outputs).get(image).id == image  # Alice's image is still there


def test_a_second_client_cannot_cancel_the_firsts_training(served, manager: PipelineManager,
                                                           monkeypatch: pytest.MonkeyPatch):
    folder = make_dataset(manager.paths.training_data / "upload-1", count=2)
    alice, bob = Client(served.local_url, verbose=False), Client(served.local_url, verbose=False)
    settings = [str(folder), "icons", "tiny-sd15", "alice-brand", "acme", 4, 4, 1e-3, 0, 400, 32, 1, 1, 0, 1,
                True, False, False]
    state, _ = alice.predict(*settings, api_name="/start_training")
    assert state["status"] in ("queued", "running")
    deadline = time.monotonic() + 120
    while (now := bob.predict(api_name="/training_status"))["step"] < 1:
        assert time.monotonic() < deadline and now["status"] in ("queued", "running"), now
        time.sleep(0.1)
    with pytest.raises(Exception, match="'alice-brand' was started in another browser session"):
        bob.predict(api_name="/cancel_training")
    monkeypatch.setenv(ENV_PRIVATE, "1")
    seen = bob.predict(api_name="/training_status")  # busy, but not whose or what
    assert seen["status"] == "running" and seen["name"] == "another user's LoRA"
    assert seen["samples"] == [] and seen["history"] == [] and seen["run_dir"] == ""
    assert alice.predict(api_name="/training_status")["name"] == "alice-brand"
    state, _ = alice.predict(api_name="/cancel_training")
    assert state["status"] in ("cancelling", "cancelled")
    assert manager.training_jobs.wait(timeout=120).status == "cancelled"


def test_a_session_that_ended_releases_its_images_on_a_shared_gallery(manager: PipelineManager):
    demo = build_app(manager)
    alice, bob = (SimpleNamespace(session_hash=s, username=None) for s in ("alice-session", "bob-session"))
    generate = _handler(demo, "generate")
    _, metadata, _, _ = generate(alice, *{**GOOD, "count": 1}.values(), *SLOTS, None)
    image = metadata[0]["gallery_id"]
    with pytest.raises(gr.Error, match="only they can delete it"):
        _handler(demo, "gallery_delete")(image, True, bob)
    _handler(demo, "session_ended")(alice)  # demo.unload: Alice reloaded the page
    assert _handler(demo, "gallery_delete")(image, True, bob) == f"Deleted {image}."
