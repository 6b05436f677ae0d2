import inspect
import re

import pytest
import torch
from helpers import IMAGE_SIZE, tiny_moco, tiny_seed_config, tiny_student
from transformers import AutoConfig, AutoModel

from seed_hf import MocoConfig, MocoForPretraining, SeedConfig, SeedForDistillation


def _docstring_defaults(cls):
    """name -> documented default, parsed from ``name (`type`, *optional*, defaults to X):``."""
    pattern = re.compile(r"^\s+(\w+) \(`[^`]+`, \*optional\*, defaults to `?([^`:]+?)`?\):", re.M)
    return dict(pattern.findall(cls.__doc__))


@pytest.mark.parametrize("cls", [SeedConfig, MocoConfig])
def test_config_docstring_defaults_match_signature(cls):
    documented = _docstring_defaults(cls)
    params = {
        k: v for k, v in inspect.signature(cls.__init__).parameters.items() if k not in ("self", "kwargs")
    }
    assert set(documented) == set(params), set(documented) ^ set(params)
    for name, text in documented.items():
        default = params[name].default
        if isinstance(default, str):
            text = text.strip('"')
        expected = {"{}": None}.get(text, text)
        assert str(default) == str(expected) or (expected is None and default is None), (name, text, default)


def test_config_serialises_and_validates():
    config = tiny_seed_config(student_model_args={"drop_path_rate": 0.1}, teacher_temperature=1e-4)
    restored = SeedConfig.from_dict(config.to_dict())
    assert restored.student_model_args == {"drop_path_rate": 0.1}
    assert restored.teacher_temperature == 1e-4
    for bad, match in [
        (dict(student_temperature=0), "student_temperature"),
        (dict(teacher_temperature=-0.1), "teacher_temperature"),
        (dict(queue_size=0), "queue_size"),
        (dict(loss_variant="x"), "loss_variant"),
        (dict(in_chans=1, image_mean=[0.1, 0.2]), "in_chans"),
    ]:
        with pytest.raises(ValueError, match=match):
            tiny_seed_config(**bad)


def test_unknown_student_architecture_is_named():
    with pytest.raises(ValueError, match="student_architecture='resnet_does_not_exist'"):
        SeedForDistillation(tiny_seed_config(student_architecture="resnet_does_not_exist"))


def test_forward_shapes_and_head_width():
    model = tiny_student(head_hidden_dim=48)
    assert model.head[0].out_features == 48
    x = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    out = model(x, teacher_embeds=torch.randn(3, 16))
    assert out.student_embeds.shape == (3, 16)
    assert out.logits.shape == (3, 1 + 40)
    assert out.pooler_output.shape == (3, model.pooled_width)
    assert torch.allclose(out.student_embeds.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model(x).loss is None
    assert isinstance(model(x, return_dict=False), tuple)


def test_grayscale_student():
    model = tiny_student(in_chans=1)
    assert model.config.image_mean == [0.5]
    out = model(torch.randn(2, 1, IMAGE_SIZE, IMAGE_SIZE), teacher_embeds=torch.randn(2, 16))
    assert torch.isfinite(out.loss)


def test_save_load_round_trip_keeps_weights_and_queue(tmp_path):
    model = tiny_student().eval()
    model.queue.enqueue(torch.nn.functional.normalize(torch.randn(7, 16), dim=1))
    model.save_pretrained(tmp_path)
    loaded = SeedForDistillation.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.queue.embeddings, model.queue.embeddings)
    assert int(loaded.queue.ptr) == 7
    x, t = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE), torch.randn(2, 16)
    a, b = model(x, teacher_embeds=t), loaded(x, teacher_embeds=t)
    assert torch.allclose(a.loss, b.loss, atol=1e-5)
    assert (a.pooler_output - b.pooler_output).abs().max() <= 1e-5
    # registered with the Auto classes under a namespaced model_type
    assert AutoConfig.from_pretrained(tmp_path).model_type == "seed_distillation"
    assert isinstance(AutoModel.from_pretrained(tmp_path), SeedForDistillation)


def test_moco_forward_round_trip_and_momentum(tmp_path):
    model = tiny_moco(key_bn_splits=2, momentum=0.9)
    x = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    before = next(model.encoder_k.parameters()).clone()
    with torch.no_grad():
        next(model.encoder.parameters()).add_(1.0)
    out = model(x, pixel_values_k=x.flip(-1))
    assert out.logits.shape == (4, 41) and torch.isfinite(out.loss)
    after = next(model.encoder_k.parameters())
    assert torch.allclose(after, 0.9 * before + 0.1 * next(model.encoder.parameters()), atol=1e-6)
    assert not any(p.requires_grad for p in model.encoder_k.parameters())
    model.save_pretrained(tmp_path)
    loaded = MocoForPretraining.from_pretrained(tmp_path)
    assert torch.equal(next(loaded.encoder_k.parameters()), after)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "mobilenetv3_small_100"])
@pytest.mark.parametrize("model_cls", ["seed", "moco"])
def test_backbone_keeps_timm_init(arch, model_cls):
    """post_init must not re-initialise the timm backbone (zero-init-last BN, timm's conv init)."""
    import timm

    torch.manual_seed(0)
    reference = timm.create_model(arch, num_classes=0).state_dict()
    torch.manual_seed(0)
    if model_cls == "seed":
        model = SeedForDistillation(SeedConfig(student_architecture=arch, queue_size=64))
        backbone = model.student
    else:
        model = MocoForPretraining(MocoConfig(architecture=arch, queue_size=64))
        backbone = model.encoder
    state = backbone.state_dict()
    assert state.keys() == reference.keys()
    for name, value in reference.items():
        assert torch.equal(state[name], value), name


def test_moco_key_encoder_starts_as_query_copy():
    model = tiny_moco()
    for q, k in zip(
        [*model.encoder.state_dict().values(), *model.head.state_dict().values()],
        [*model.encoder_k.state_dict().values(), *model.head_k.state_dict().values()],
    ):
        assert torch.equal(q, k)


def test_query_encoder_folder_roundtrip(tmp_path):
    from seed_hf import load_teacher
    from seed_hf.models.modeling_moco import load_query_encoder, save_query_encoder

    model = tiny_moco().eval()
    save_query_encoder(model, tmp_path, dtype=torch.float16, training={"steps": 3})
    encoder, head, config = load_query_encoder(tmp_path)
    assert config.architecture == "test_resnet"
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        expected = model.embed(x)
        got = torch.nn.functional.normalize(
            head(encoder.forward_head(encoder.forward_features(x), pre_logits=True)), dim=1
        )
    assert (expected - got).abs().max() < 1e-2  # fp16 storage
    teacher = load_teacher(str(tmp_path))
    assert torch.allclose(teacher(x), got, atol=1e-5)


class OfficialSmallPatchQueues:
    """Hand-written reference of the official small-patch enqueue (jacobswan1/SEED
    ``seed/small_patch_builder.py``, ``SEED.forward`` + ``SEED._dequeue_and_enqueue``): queues
    are ``(dim, K)``, one shared pointer, ``assert K % batch == 0``; each rank passes its
    teacher keys and the first of its ``N`` small-crop keys per image, gathered across ranks."""

    def __init__(self, queue: torch.Tensor, small_queue: torch.Tensor):
        self.K = queue.shape[0]
        self.queue = queue.t().clone()
        self.small_queue = small_queue.t().clone()
        self.queue_ptr = 0

    def step(
        self, t_emb_per_rank: list[torch.Tensor], t_small_emb_per_rank: list[torch.Tensor], n_crops: int
    ):
        dim = self.queue.shape[0]
        firsts = [t.view(-1, n_crops, dim)[:, 0].contiguous() for t in t_small_emb_per_rank]
        keys, small_keys = torch.cat(t_emb_per_rank), torch.cat(firsts)  # concat_all_gather
        batch_size = keys.shape[0]
        ptr = self.queue_ptr
        assert self.K % batch_size == 0
        self.queue[:, ptr : ptr + batch_size] = keys.t()
        self.small_queue[:, ptr : ptr + batch_size] = small_keys.t()
        self.queue_ptr = (ptr + batch_size) % self.K


@pytest.mark.parametrize("keys", ["first_crop", "all_crops"])
def test_small_queue_follows_the_official_enqueue(keys):
    """Two ranks x 2 images x 3 small crops, K = 8: 3 steps wrap the queues around once. The
    default (first_crop) matches the official reference exactly, all_crops does not."""
    small_queue_size = None if keys == "first_crop" else 36
    model = tiny_student(
        queue_size=8, num_small_crops=3, small_queue_keys=keys, small_queue_size=small_queue_size
    )
    if keys == "first_crop":
        reference = OfficialSmallPatchQueues(model.queue.embeddings, model.small_queue.embeddings)
    g = torch.Generator().manual_seed(0)
    unit = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=-1)  # noqa: E731
    for _ in range(3):
        t = [unit(2, 16), unit(2, 16)]  # per rank: (B, dim)
        t_small = [unit(2 * 3, 16), unit(2 * 3, 16)]  # per rank: (B * N, dim), image-major
        model.enqueue(torch.cat(t), torch.cat(t_small))  # what SeedTrainer passes (gathered keys)
        if keys == "first_crop":
            reference.step(t, t_small, 3)
            assert torch.allclose(model.queue.embeddings, reference.queue.t(), atol=1e-6)
            assert torch.allclose(model.small_queue.embeddings, reference.small_queue.t(), atol=1e-6)
            assert int(model.queue.ptr) == int(model.small_queue.ptr) == reference.queue_ptr
    if keys == "all_crops":
        assert int(model.small_queue.num_filled) == 36 and int(model.queue.num_filled) == 8
        assert torch.allclose(model.small_queue.embeddings[-6:], t_small[1], atol=1e-6)
    with pytest.raises(ValueError, match="num_small_crops"):
        model.enqueue(unit(4, 16), unit(5, 16))
    with pytest.raises(ValueError, match="small_queue_keys"):
        tiny_seed_config(num_small_crops=3, small_queue_keys="random_crop")


def test_query_encoder_loads_a_training_folder_strictly(tmp_path):
    """A MoCoForPretraining folder loads as its query half (key encoder and queue skipped, no
    warning-and-random-init); a folder missing a weight is refused, naming it."""
    from safetensors.torch import load_file, save_file

    from seed_hf import MocoQueryEncoder
    from seed_hf.models.modeling_moco import load_query_encoder

    model = tiny_moco().eval()
    model.save_pretrained(tmp_path / "run")
    query = MocoQueryEncoder.from_pretrained(tmp_path / "run").eval()
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        assert torch.equal(query(x), model.embed(x))
    state = load_file(str(tmp_path / "run" / "model.safetensors"))
    dropped = next(k for k in state if k.startswith("head."))
    del state[dropped]
    save_file(state, str(tmp_path / "run" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"missing keys \['{re.escape(dropped)}'\]"):
        load_query_encoder(tmp_path / "run")
