"""name_tune: a made-up name in front of, or after, a caption should leave the text encoder's states as they were."""

from __future__ import annotations

import random

import torch
from tiny_pipelines import tiny_tokenizer
from transformers import CLIPTextConfig, CLIPTextModel

from brandgen.tiny import name_tune


def test_position_map_points_each_named_position_at_its_plain_counterpart():
    # "zorvex, red star" with the name as 3 tokens after the begin token: they map to it, the rest shift back
    assert name_tune.position_map(2, 3, 0, 10) == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    # "red star by zorvex": the caption keeps its place, the 3 name tokens map to the caption's end token (3)
    assert name_tune.position_map(2, 3, 2, 10) == [0, 1, 2, 3, 3, 3, 3, 4, 5, 6]


def test_named_example_maps_the_named_prompt_onto_the_plain_one():
    tokenizer = tiny_tokenizer()
    named, mapping = name_tune.named_example("red star icon", random.Random(3), frozenset(), tokenizer)
    assert named != "red star icon" and "red star icon" in named and len(mapping) == tokenizer.model_max_length
    plain = tokenizer("red star icon").input_ids
    full = tokenizer(named).input_ids
    assert [plain[mapping[p]] for p in range(len(full)) if full[p] in plain[1:-1]] == \
        [t for t in full if t in plain[1:-1]]  # every caption token maps onto the same token of the plain prompt
    assert plain[mapping[len(full) - 1]] == tokenizer.eos_token_id  # the end token onto the end token


def _encoder(tokenizer) -> CLIPTextModel:
    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))


def _named_gap(student, teacher, tokenizer, captions: list[str]) -> float:
    """Mean squared gap between the student's states for the named captions and the teacher's plain ones."""
    rng = random.Random(99)
    pairs = [name_tune.named_example(c, rng, frozenset(), tokenizer) for c in captions]
    ids = lambda texts: tokenizer(texts, padding="max_length", max_length=77, truncation=True,  # noqa: E731
                                  return_tensors="pt").input_ids
    with torch.no_grad():
        target = teacher(ids(captions)).last_hidden_state
        index = torch.tensor([m for _, m in pairs])[..., None].expand(-1, -1, target.shape[-1])
        got = student(ids([n for n, _ in pairs])).last_hidden_state
    return torch.nn.functional.mse_loss(got, torch.gather(target, 1, index)).item()


def test_tuning_brings_the_named_states_to_the_plain_ones_and_keeps_the_plain_ones():
    tokenizer = tiny_tokenizer()
    captions = [f"{c} {s} icon" for c in ("red", "blue") for s in ("star", "circle", "bell", "cart", "lock")]
    teacher = _encoder(tokenizer)
    reference = _encoder(tokenizer)  # the same weights, kept out of tune()
    before = _named_gap(reference, reference, tokenizer, captions)
    student, report = name_tune.tune(teacher, tokenizer, captions, frozenset(), seconds=120, max_steps=60, lr=3e-3,
                                     batch=8)
    assert report["steps"] == 60 and report["log"][0]["step"] == 1
    after = _named_gap(student, reference, tokenizer, captions)
    assert after < 0.5 * before
    ids = tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        drift = torch.nn.functional.mse_loss(student(ids).last_hidden_state, reference(ids).last_hidden_state).item()
    assert drift < 0.5 * before  # the plain captions keep (most of) their states
    assert all(torch.equal(a, b) for a, b in zip(teacher.state_dict().values(), reference.state_dict().values()))
