"""The thread policy (mobilevit/thread_policy.py): one thread for a forward after forwards that did not get
their CPUs, the user's thread setting untouched, the threads back when CPUs are idle. Driven by fake
measurements and a fake /proc count; never asserts on time."""

import pytest
import torch

from mobilevit import auto, thread_policy
from mobilevit.testing_utils import fill_realistic_weights_


@pytest.fixture
def policy(monkeypatch):
    """A fresh policy with a fake clock, fake CPU measurements and a fake runnable count, and 2 torch threads."""
    fresh = thread_policy.ThreadPolicy()
    state = {"share": 1.0, "runnable": 1, "now": 100.0, "threads_seen": []}
    wall = {"t": 0.0}

    def perf_counter():  # every forward lasts 5 ms of wall time
        wall["t"] += 0.005
        return wall["t"]

    def process_time():  # and gets `share` of the CPUs it asked for
        return wall["t"] * torch.get_num_threads() * state["share"]

    monkeypatch.setattr(thread_policy.time, "perf_counter", perf_counter)
    monkeypatch.setattr(thread_policy.time, "process_time", process_time)
    monkeypatch.setattr(thread_policy.time, "monotonic", lambda: state["now"])
    monkeypatch.setattr(thread_policy, "_runnable_tasks", lambda: state["runnable"])
    monkeypatch.setattr(thread_policy, "usable_cpus", lambda: 2)
    monkeypatch.delenv(thread_policy.ENV_SWITCH, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        yield fresh, state
    finally:
        torch.set_num_threads(before)


def forward(policy, state):
    with policy.forward():
        state["threads_seen"].append(torch.get_num_threads())


def test_idle_machine_keeps_every_thread(policy):
    policy, state = policy
    for _ in range(5):
        forward(policy, state)
    assert state["threads_seen"] == [2] * 5 and not policy.single_thread


def test_contended_forwards_drop_to_one_thread_and_restore_the_setting(policy):
    policy, state = policy
    state["share"], state["runnable"] = 0.4, 4  # two busy processes beside us
    for _ in range(4):
        forward(policy, state)
    assert state["threads_seen"] == [2, 2, 1, 1]  # two slow forwards in a row, then one thread
    assert torch.get_num_threads() == 2  # the user's setting, between forwards


def test_one_slow_forward_is_not_enough(policy):
    policy, state = policy
    for share in (0.4, 1.0, 0.4, 1.0):
        state["share"] = share
        forward(policy, state)
    assert state["threads_seen"] == [2, 2, 2, 2]


def test_threads_come_back_when_cpus_are_idle_or_after_a_while(policy):
    policy, state = policy
    state["share"], state["runnable"] = 0.4, 4
    for _ in range(3):
        forward(policy, state)
    assert state["threads_seen"][-1] == 1
    state["runnable"] = 1  # the others are gone: only this thread is runnable
    forward(policy, state)
    assert state["threads_seen"][-1] == 2

    state["threads_seen"].clear()
    state["runnable"] = 4
    for _ in range(3):  # busy again
        forward(policy, state)
    state["now"] += thread_policy.RETRY_AFTER_S + 1  # still busy, but time for a probe
    forward(policy, state)
    forward(policy, state)
    assert state["threads_seen"] == [2, 1, 1, 2, 1]  # the probe's one slow forward sends it back to one thread


def test_switched_off_single_threaded_or_nested_it_stays_out_of_the_way(policy, monkeypatch):
    policy, state = policy
    state["share"], state["runnable"] = 0.4, 4
    monkeypatch.setenv(thread_policy.ENV_SWITCH, "0")
    for _ in range(3):
        forward(policy, state)
    assert state["threads_seen"] == [2, 2, 2] and not policy.single_thread
    monkeypatch.delenv(thread_policy.ENV_SWITCH)

    with policy.forward():  # a model inside another one's forward: the outer one decides
        for _ in range(3):
            forward(policy, state)
    assert not policy.single_thread

    torch.set_num_threads(1)
    for _ in range(3):
        forward(policy, state)
    assert not policy.single_thread


def test_models_run_their_eval_forwards_under_the_policy(monkeypatch):
    entered = []
    real = thread_policy.POLICY.forward

    def spy():
        entered.append(1)
        return real()

    monkeypatch.setattr(thread_policy.POLICY, "forward", spy)
    config = auto.new_config("xx-small", "semantic-segmentation", num_labels=3)
    model = fill_realistic_weights_(auto.new_model(config, "semantic-segmentation")).eval()
    pixel_values = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        model(pixel_values)
    assert len(entered) == 2  # the head model and its base model (which finds the policy taken)
    entered.clear()
    model(pixel_values)  # autograd on: the plain path, no policy
    model.train()
    with torch.no_grad():
        model(torch.rand(2, 3, 64, 64))  # training-mode BatchNorm wants more than one value per channel
    assert entered == []


def test_more_threads_than_cpus_is_not_contention(policy):
    policy, state = policy
    torch.set_num_threads(4)
    state["share"] = 0.5  # four threads on two idle CPUs: the process gets both CPUs, all it can
    for _ in range(3):
        forward(policy, state)
    assert state["threads_seen"] == [4, 4, 4] and not policy.single_thread


def test_a_forward_on_one_thread_equals_the_usual_one(policy):
    policy, state = policy
    config = auto.new_config("xx-small", "image-classification", num_labels=10)
    model = fill_realistic_weights_(auto.new_model(config, "image-classification")).eval()
    pixel_values = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        usual = model(pixel_values).logits
        policy.single_thread, policy._since, state["runnable"] = True, state["now"], 4  # contended just now
        with policy.forward():  # what the model's own call does, with this test's policy
            assert torch.get_num_threads() == 1
            single = model(pixel_values).logits
    assert usual.abs().max() > 0.3
    torch.testing.assert_close(single, usual, atol=1e-5, rtol=0)


def test_a_training_step_drops_at_once_stays_set_and_is_probed_no_sooner_than_its_duration_allows(policy, monkeypatch):
    """A contended step costs 20-30x an uncontended one: one slow step is enough to drop, the choice stays set
    for what runs between steps, a probe waits for many steps' worth of time, and the threads come back only
    when every look at the runnable count finds idle CPUs."""
    policy, state = policy
    wall = {"t": 0.0}
    looks = iter([])

    def perf_counter():  # every unit lasts 1 s of wall time
        wall["t"] += 0.5
        return wall["t"]

    monkeypatch.setattr(thread_policy.time, "perf_counter", perf_counter)
    monkeypatch.setattr(thread_policy.time, "process_time", lambda: wall["t"] * torch.get_num_threads() * state["share"])
    monkeypatch.setattr(thread_policy.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(thread_policy, "_runnable_tasks", lambda: next(looks, state["runnable"]))

    def step():
        with policy.work("training step", requested=2, restore=False):
            state["threads_seen"].append(torch.get_num_threads())
        state["threads_seen"].append(("between", torch.get_num_threads()))

    state["share"], state["runnable"] = 0.4, 4
    step(), step()
    assert state["threads_seen"] == [2, ("between", 1), 1, ("between", 1)]  # one slow step; the choice stays
    state["threads_seen"].clear()
    state["now"] += thread_policy.RETRY_AFTER_S + 1  # a forward's probe time, but not a training step's
    step()
    state["now"] += thread_policy.RETRY_AFTER_UNITS * 1.0
    step()  # the probe, slow again
    looks = iter([1, 1, 4])  # idle for two looks, then busy: a snapshot, not an idle machine
    step()
    looks = iter([1] * thread_policy.IDLE_SAMPLES)
    state["share"] = 1.0
    step(), step()
    assert [t for t in state["threads_seen"] if not isinstance(t, tuple)] == [1, 2, 1, 2, 2]
    assert policy.counts["training step", 2] == 4 and policy.counts["training step", 1] == 3


def test_the_trainer_runs_each_training_step_under_the_policy(monkeypatch, tmp_path):
    from transformers import TrainingArguments

    from mobilevit.training import MobileViTTrainer

    units = []
    real = thread_policy.POLICY.work

    def spy(unit, *args, **kwargs):
        units.append(unit)
        return real(unit, *args, **kwargs)

    monkeypatch.setattr(thread_policy.POLICY, "work", spy)
    config = auto.new_config("xx-small", "image-classification", num_labels=3)
    model = auto.new_model(config, "image-classification")
    data = [{"pixel_values": torch.rand(3, 64, 64), "labels": torch.tensor(i % 3)} for i in range(4)]
    args = TrainingArguments(str(tmp_path), per_device_train_batch_size=2, max_steps=2, report_to="none",
                             use_cpu=True, save_strategy="no", disable_tqdm=True)
    before = torch.get_num_threads()
    MobileViTTrainer(model=model, args=args, train_dataset=data).train()
    assert units == ["training step"] * 2
    assert torch.get_num_threads() == before  # the setting asked for, back after training
