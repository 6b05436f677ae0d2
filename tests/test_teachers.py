import pytest
import torch
from helpers import IMAGE_SIZE, tiny_moco
from safetensors.torch import save_file

from seed_hf import load_teacher
from seed_hf.models.backbones import ProjectionHead, create_backbone, pooled_features


def _moco_v2_checkpoint(path, arch="test_resnet"):
    """A checkpoint in the official MoCo-v2 layout: module.encoder_q.* (+ fc.0 / fc.2 MLP), encoder_k, queue."""
    torch.manual_seed(0)
    backbone = create_backbone(arch)
    head = ProjectionHead(backbone.num_features, 24, 16)
    state = {f"module.encoder_q.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"module.encoder_q.fc.{k}": v for k, v in head.state_dict().items()})
    state.update({f"module.encoder_k.{k}": v.clone() for k, v in backbone.state_dict().items()})
    state["module.queue"] = torch.randn(16, 32)
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state}, path)
    return backbone.eval(), head


def test_moco_v2_checkpoint_with_mlp_head(tmp_path):
    backbone, head = _moco_v2_checkpoint(tmp_path / "moco.pth.tar")
    teacher = load_teacher("test_resnet", tmp_path / "moco.pth.tar")
    assert teacher.embed_dim == 16
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    expected = torch.nn.functional.normalize(head(pooled_features(backbone, x)), dim=1)
    assert torch.allclose(teacher(x), expected, atol=1e-5)


def test_teacher_is_frozen_and_stays_in_eval():
    teacher = load_teacher("test_resnet", allow_random=True)
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    out = teacher(torch.randn(2, 1, IMAGE_SIZE, IMAGE_SIZE))  # 1-channel data, 3-channel teacher
    assert out.shape == (2, teacher.embed_dim) and not out.requires_grad


def test_safetensors_state_dict_and_key_mismatch(tmp_path):
    backbone = create_backbone("test_resnet")
    save_file(backbone.state_dict(), tmp_path / "w.safetensors")
    teacher = load_teacher("test_resnet", tmp_path / "w.safetensors")
    assert teacher.embed_dim == backbone.num_features
    bad = {k: v for k, v in backbone.state_dict().items() if not k.startswith("conv1")}
    bad["extra.weight"] = torch.zeros(1)
    save_file(bad, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=r"missing keys \['conv1.*unexpected keys \['extra.weight'\]"):
        load_teacher("test_resnet", tmp_path / "bad.safetensors")


def test_seed_hf_moco_folder(tmp_path):
    moco = tiny_moco().eval()
    moco.save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.allclose(teacher(x), moco.embed(x), atol=1e-5)


def test_missing_teacher_file_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="teacher_checkpoint"):
        load_teacher("test_resnet", tmp_path / "nope.safetensors")
    with pytest.raises(ValueError, match="teacher_name_or_path"):
        load_teacher("not_a_real_net", allow_random=True)
    with pytest.raises(FileNotFoundError, match="teacher_name_or_path"):
        load_teacher(str(tmp_path / "missing" / "dir"))


@pytest.mark.parametrize("arch", ["test_resnet", "test_efficientnet", "test_vit"])
def test_optimized_teacher_gives_the_same_embeddings(arch):
    from seed_hf.teachers.frozen import FrozenTeacher

    torch.manual_seed(0)
    backbone = create_backbone(arch)
    for m in backbone.modules():  # non-trivial BN statistics, so that folding them matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    teacher = FrozenTeacher(backbone, ProjectionHead(backbone.num_features, 16, 8), 3)
    x = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)
    expected = teacher(x)
    teacher.optimize_for_inference(channels_last=True, probe=x)
    assert torch.allclose(teacher(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-4)
    if arch == "test_resnet":
        assert teacher.fused_backbone is not None
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.fused_backbone.modules())


def _layout_checkpoint(path, layout):
    """A tiny checkpoint in a published layout; returns the reference backbone and head."""
    from torch import nn

    torch.manual_seed(0)
    backbone = create_backbone("test_resnet").eval()
    width = backbone.num_features
    if layout == "swav":  # facebookresearch/swav: Linear-BN-ReLU-Linear head, prototypes
        head = nn.Sequential(nn.Linear(width, 24), nn.BatchNorm1d(24), nn.ReLU(), nn.Linear(24, 16)).eval()
        head[1].running_mean.uniform_(-1, 1)
        state = {f"module.{k}": v for k, v in backbone.state_dict().items()}
        state.update({f"module.projection_head.{k}": v for k, v in head.state_dict().items()})
        state["module.prototypes.weight"] = torch.randn(30, 16)
    elif layout == "simclr":  # PyTorch SimCLR re-implementations: backbone.* + projection_head.*
        head = ProjectionHead(width, 24, 16)
        state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
        state.update({f"projection_head.{k}": v for k, v in head.state_dict().items()})
    else:  # official SEED: module.student.* (fc = MLP head) + module.teacher.*
        head = ProjectionHead(width, width, 16)
        state = {f"module.student.{k}": v for k, v in backbone.state_dict().items()}
        state.update({f"module.student.fc.{k}": v for k, v in head.state_dict().items()})
        state.update({f"module.teacher.{k}": v.clone() for k, v in backbone.state_dict().items()})
        state["module.queue"] = torch.randn(16, 64)
    torch.save({"state_dict": state, "epoch": 1}, path)
    return backbone, head


@pytest.mark.parametrize("layout", ["swav", "simclr", "seed"])
def test_published_ssl_checkpoint_layouts(tmp_path, layout):
    from seed_hf.teachers.checkpoint_layouts import detect_checkpoint_layout, load_state_dict_file

    backbone, head = _layout_checkpoint(tmp_path / "ckpt.pth", layout)
    assert detect_checkpoint_layout(load_state_dict_file(tmp_path / "ckpt.pth")) == layout
    teacher = load_teacher("test_resnet", tmp_path / "ckpt.pth")
    assert teacher.embed_dim == 16
    x = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    expected = torch.nn.functional.normalize(head(pooled_features(backbone, x)), dim=1)
    assert torch.allclose(teacher(x), expected, atol=1e-5)
    without_head = load_teacher("test_resnet", tmp_path / "ckpt.pth", use_head=False)
    assert without_head.embed_dim == backbone.num_features


def _tiny_transformers_model(kind, folder):
    from transformers import (
        CLIPConfig,
        CLIPModel,
        Dinov2Config,
        Dinov2Model,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    torch.manual_seed(0)
    layers = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    small = dict(**layers, image_size=32, patch_size=8)
    if kind == "vit":
        model = ViTModel(ViTConfig(**small))
    elif kind == "dinov2":
        model = Dinov2Model(Dinov2Config(**small))
    else:
        model = CLIPModel(
            CLIPConfig(
                vision_config=small,
                projection_dim=16,
                text_config=dict(**layers, vocab_size=99),
            )
        )
    model.eval().save_pretrained(folder)
    ViTImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(folder)
    return model


@pytest.mark.parametrize(
    "kind,embedding,dim",
    [("vit", "cls", 32), ("dinov2", "auto", 32), ("clip", "auto", 16), ("dinov2", "mean", 32)],
)
def test_transformers_vision_teachers(tmp_path, kind, embedding, dim):
    model = _tiny_transformers_model(kind, tmp_path)
    teacher = load_teacher(str(tmp_path), embedding=embedding)
    assert teacher.embed_dim == dim and teacher.expected_std == [0.25, 0.25, 0.25]
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        if kind == "clip":
            reference = model.get_image_features(pixel_values=x).pooler_output
        elif embedding == "mean":
            reference = model(pixel_values=x).last_hidden_state[:, 1:].mean(1)
        elif kind == "dinov2":
            reference = model(pixel_values=x).pooler_output
        else:
            reference = model(pixel_values=x).last_hidden_state[:, 0]
    assert torch.allclose(teacher(x), torch.nn.functional.normalize(reference, dim=1), atol=1e-5)
    # data normalised with ImageNet statistics is re-normalised to the teacher's (0.5 / 0.25)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    teacher.set_data_normalization(mean, std)
    raw = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    data = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    expected = load_teacher(str(tmp_path), embedding=embedding)((raw - 0.5) / 0.25)
    assert torch.allclose(teacher(data), expected, atol=1e-4)


def test_timm_name_without_weights_is_refused():
    with pytest.raises(ValueError, match="--teacher_checkpoint.*hf-hub:.*hf:.*--allow_random_teacher"):
        load_teacher("test_resnet")
    teacher = load_teacher("test_resnet", allow_random=True)
    assert "random weights" in teacher.description


@pytest.mark.parametrize(
    "name,expected", [("mobilenet_v3_small", "mobilenetv3_small_100"), ("resnet_50", "'resnet50'")]
)
def test_misspelt_architecture_suggests_the_timm_name(name, expected):
    with pytest.raises(ValueError, match="not a timm architecture") as error:
        load_teacher(name, allow_random=True)
    assert expected in str(error.value)


def test_checkpoint_of_another_architecture_is_one_line(tmp_path):
    import timm

    save_file(timm.create_model("resnet18").state_dict(), tmp_path / "r18.safetensors")
    with pytest.raises(ValueError) as error:
        load_teacher("resnet50", tmp_path / "r18.safetensors")
    message = str(error.value)
    assert "\n" not in message and message.startswith("--teacher_checkpoint")
    for part in (
        "missing keys ['layer1.0.conv3.weight'",
        "mis-shaped keys ['layer1.0.conv1.weight: (64, 64, 3, 3) vs (64, 64, 1, 1)'",
    ):
        assert part in message, message
    # a mismatch in shapes only (1- vs 3-channel stem) is named too, not torch's size-mismatch dump
    save_file(create_backbone("test_resnet", in_chans=1).state_dict(), tmp_path / "gray.safetensors")
    with pytest.raises(
        ValueError, match=r"mis-shaped keys \['conv1.0.weight: \(\d+, 1, 3, 3\) vs \(\d+, 3, 3, 3\)'\]"
    ):
        load_teacher("test_resnet", tmp_path / "gray.safetensors")


def test_prefixed_timm_state_dict_keeps_no_classifier_head(tmp_path):
    """A plain timm state dict saved under ``encoder.``: its 1000-way ``fc`` is a classifier, not a
    SimCLR projection head; a real SimCLR head under ``encoder.fc`` has a hidden layer."""
    import timm

    from seed_hf.teachers.checkpoint_layouts import detect_checkpoint_layout

    torch.manual_seed(0)
    classifier = timm.create_model("test_resnet", num_classes=1000).eval()
    state = {f"encoder.{k}": v for k, v in classifier.state_dict().items()}
    assert detect_checkpoint_layout(state) == "plain"
    torch.save(state, tmp_path / "prefixed.pth")
    teacher = load_teacher("test_resnet", tmp_path / "prefixed.pth")
    assert teacher.embed_dim == classifier.num_features != 1000
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    expected = torch.nn.functional.normalize(pooled_features(classifier, x), dim=1)
    assert torch.allclose(teacher(x), expected, atol=1e-5)

    head = ProjectionHead(classifier.num_features, 24, 16)
    mlp = {f"encoder.{k}": v for k, v in classifier.state_dict().items() if not k.startswith("fc.")}
    mlp.update({f"encoder.fc.{k}": v for k, v in head.state_dict().items()})
    assert detect_checkpoint_layout(mlp) == "simclr"
    torch.save(mlp, tmp_path / "simclr.pth")
    assert load_teacher("test_resnet", tmp_path / "simclr.pth").embed_dim == 16


def test_folder_without_config_is_named_as_such(tmp_path, monkeypatch):
    folder = tmp_path / "teacher"
    folder.mkdir()
    save_file(create_backbone("test_resnet").state_dict(), folder / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    for spec in ("teacher", str(folder)):  # a relative name has no path separator
        with pytest.raises(FileNotFoundError, match="folder without a config.json") as error:
            load_teacher(spec)
        assert "not a timm architecture" not in str(error.value)
        assert "--teacher_checkpoint" in str(error.value)


def _tiny_vision_backbone(kind):
    """A tiny random transformers vision model of each family a teacher can come from, and the
    width its embedding has."""
    import transformers as tr

    torch.manual_seed(0)
    layers = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    small = dict(**layers, image_size=32, patch_size=8)
    cnn = dict(hidden_sizes=[8, 16, 24, 40], depths=[1, 1, 1, 1])
    builders = {
        "vit": lambda: tr.ViTModel(tr.ViTConfig(**small)),
        "dinov2": lambda: tr.Dinov2Model(tr.Dinov2Config(**small)),
        "dinov2_registers": lambda: tr.Dinov2WithRegistersModel(
            tr.Dinov2WithRegistersConfig(**small, num_register_tokens=2)
        ),
        "dinov3_vit": lambda: tr.DINOv3ViTModel(tr.DINOv3ViTConfig(**small)),
        "dinov3_convnext": lambda: tr.DINOv3ConvNextModel(tr.DINOv3ConvNextConfig(**cnn)),
        "convnext": lambda: tr.ConvNextModel(tr.ConvNextConfig(**cnn)),
        "resnet": lambda: tr.ResNetModel(tr.ResNetConfig(embedding_size=8, **cnn)),  # pooled (n, c, 1, 1)
        "clip_vision": lambda: tr.CLIPVisionModel(tr.CLIPVisionConfig(**small)),
        "clip_vision_projection": lambda: tr.CLIPVisionModelWithProjection(
            tr.CLIPVisionConfig(**small, projection_dim=12)
        ),
        "siglip_vision": lambda: tr.SiglipVisionModel(tr.SiglipVisionConfig(**small)),
        # masks 75 % of the patches at random in every forward unless told otherwise
        "vit_mae": lambda: tr.ViTMAEModel(tr.ViTMAEConfig(**small)),
        # a feature map (n, c, h, w) and no pooled output
        "segformer": lambda: tr.SegformerModel(
            tr.SegformerConfig(
                num_encoder_blocks=2,
                depths=[1, 1],
                sr_ratios=[2, 1],
                hidden_sizes=[8, 40],
                num_attention_heads=[1, 2],
                patch_sizes=[7, 3],
                strides=[4, 2],
                mlp_ratios=[2, 2],
            )
        ),
    }
    widths = {"clip_vision_projection": 12, "segformer": 40}
    width = widths.get(kind, 40 if kind in ("dinov3_convnext", "convnext", "resnet") else 32)
    return builders[kind]().eval(), width


VISION_FAMILIES = [
    "vit",
    "dinov2",
    "dinov2_registers",
    "dinov3_vit",
    "dinov3_convnext",
    "convnext",
    "resnet",
    "clip_vision",
    "clip_vision_projection",
    "siglip_vision",
    "vit_mae",
    "segformer",
]


@pytest.mark.parametrize("kind", VISION_FAMILIES)
def test_every_transformers_vision_family_is_a_teacher(tmp_path, kind):
    from transformers import ViTImageProcessor

    model, width = _tiny_vision_backbone(kind)
    model.save_pretrained(tmp_path)
    ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    assert teacher.embed_dim == width
    x = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE)
    out = teacher(x)
    assert out.shape == (3, width) and torch.isfinite(out).all()
    assert torch.equal(teacher(x), out), "a frozen teacher must give the same embeddings every forward"
    if kind == "vit_mae":  # every patch, in order: the CLS token of the whole, unshuffled sequence
        model.config.mask_ratio = 0.0
        with torch.no_grad():
            tokens = model(pixel_values=x, noise=torch.arange(16.0).expand(3, 16)).last_hidden_state
        assert tokens.shape[1] == 1 + (IMAGE_SIZE // 8) ** 2
        assert torch.allclose(out, torch.nn.functional.normalize(tokens[:, 0], dim=1), atol=1e-5)
    if kind == "segformer":  # only a feature map: its spatial average
        with torch.no_grad():
            reference = model(pixel_values=x).last_hidden_state.mean(dim=(2, 3))
        assert torch.allclose(out, torch.nn.functional.normalize(reference, dim=1), atol=1e-5)


def test_clip_vision_with_projection_gives_the_image_embeds(tmp_path):
    from transformers import ViTImageProcessor

    model, _ = _tiny_vision_backbone("clip_vision_projection")
    model.save_pretrained(tmp_path)
    ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    assert type(teacher.backbone.model).__name__ == "CLIPVisionModelWithProjection"
    assert teacher.embed_dim == model.config.projection_dim == 12
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        reference = model(pixel_values=x).image_embeds
    assert torch.allclose(teacher(x), torch.nn.functional.normalize(reference, dim=1), atol=1e-5)


def test_transformers_folder_without_preprocessor_config_needs_its_normalisation(tmp_path):
    model, _ = _tiny_vision_backbone("dinov2")
    model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        load_teacher(str(tmp_path))
    message = str(error.value)
    assert (
        "preprocessor_config.json" in message
        and "teacher_image_mean" in message
        and "teacher_image_std" in message
    )
    teacher = load_teacher(str(tmp_path), teacher_image_mean=[0.5] * 3, teacher_image_std=[0.25] * 3)
    assert teacher.expected_mean == [0.5] * 3 and teacher.expected_std == [0.25] * 3
    assert teacher.normalization == {"mean": [0.5] * 3, "std": [0.25] * 3}
    with pytest.raises(ValueError, match="teacher_image_std"):
        load_teacher(str(tmp_path), teacher_image_mean=[0.5] * 3)
    with pytest.raises(ValueError, match="teacher_image_std must be > 0"):
        load_teacher(str(tmp_path), teacher_image_mean=[0.5] * 3, teacher_image_std=[0.0] * 3)


def test_explicit_teacher_normalisation_wins_and_is_recorded(tmp_path):
    from transformers import ViTImageProcessor

    model, _ = _tiny_vision_backbone("dinov2")
    model.save_pretrained(tmp_path)
    ViTImageProcessor(image_mean=[0.5] * 3, image_std=[0.25] * 3).save_pretrained(tmp_path)
    assert load_teacher(str(tmp_path)).normalization == {"mean": [0.5] * 3, "std": [0.25] * 3}
    teacher = load_teacher(str(tmp_path), teacher_image_mean=[0.4] * 3, teacher_image_std=[0.2] * 3)
    assert teacher.expected_mean == [0.4] * 3 and teacher.expected_std == [0.2] * 3
    # a timm teacher sees the student's normalisation unless told otherwise
    assert load_teacher("test_resnet", allow_random=True).normalization is None
    timm_teacher = load_teacher(
        "test_resnet", allow_random=True, teacher_image_mean=[0.1], teacher_image_std=[0.3]
    )
    assert timm_teacher.expected_mean == [0.1] * 3 and timm_teacher.expected_std == [0.3] * 3


def test_run_seed_passes_the_teacher_normalisation_flags(tmp_path, monkeypatch):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    from seed_hf.scripts import run_seed

    seen = {}

    def fake_load_teacher(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(run_seed, "load_teacher", fake_load_teacher)
    argv = [
        "--teacher_name_or_path",
        str(tmp_path),
        "--teacher_image_mean",
        "0.5",
        "0.5",
        "0.5",
        "--teacher_image_std",
        "0.25",
        "0.25",
        "0.25",
        "--output_dir",
        str(tmp_path / "out"),
        "--use_cpu",
        "--report_to",
        "none",
    ]
    with pytest.raises(RuntimeError, match="stop here"):
        run_seed.main(argv)
    assert seen["teacher_image_mean"] == [0.5] * 3 and seen["teacher_image_std"] == [0.25] * 3


def test_pickled_full_model_checkpoint_asks_for_a_state_dict(tmp_path):
    torch.save(create_backbone("test_resnet"), tmp_path / "model.pth")  # the whole module, pickled
    with pytest.raises(ValueError) as error:
        load_teacher("test_resnet", tmp_path / "model.pth")
    message = str(error.value)
    assert "model.state_dict()" in message and "safetensors" in message and "model.pth" in message
    assert "weights_only=False" not in message


def test_classification_checkpoint_distils_its_cls_token_not_a_random_pooler(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    classifier = ViTForImageClassification(config).eval()  # its base model has no pooler
    classifier.save_pretrained(tmp_path)
    ViTImageProcessor().save_pretrained(tmp_path)
    teacher = load_teacher(str(tmp_path))
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        reference = classifier.vit(pixel_values=x).last_hidden_state[:, 0]
    assert teacher.embed_dim == 32
    assert torch.allclose(teacher(x), torch.nn.functional.normalize(reference, dim=1), atol=1e-5)
    with pytest.raises(ValueError, match="no pooler weights"):
        load_teacher(str(tmp_path), embedding="pooler")


def test_the_teachers_package_re_exports_each_public_name_from_its_defining_module():
    import importlib

    import seed_hf.teachers as teachers

    for name in teachers.__all__:
        module = importlib.import_module(f"seed_hf.teachers.{teachers._DEFINED_IN[name]}")
        assert getattr(teachers, name) is getattr(module, name) and name in module.__all__
    assert set(teachers.__all__) <= set(dir(teachers))
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        teachers.not_a_name  # noqa: B018


@pytest.mark.parametrize("wrapper", ["", "module.", "_orig_mod.module."])
def test_checkpoint_layouts_see_the_keys_without_ddp_and_compile_wrappers(wrapper):
    """split_checkpoint cleans the keys as timm's checkpoint loading does (clean_state_dict)."""
    from seed_hf.teachers.checkpoint_layouts import detect_checkpoint_layout, split_checkpoint

    backbone = create_backbone("test_resnet")
    head = ProjectionHead(backbone.num_features, 24, 16)
    state = {f"{wrapper}encoder_q.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"{wrapper}encoder_q.fc.{k}": v for k, v in head.state_dict().items()})
    layout, backbone_state, head_state = split_checkpoint(state)
    assert layout == detect_checkpoint_layout(state) == "moco"
    assert (
        backbone_state.keys() == backbone.state_dict().keys()
        and head_state.keys() == head.state_dict().keys()
    )


def _seed_hf_folders(tmp_path):
    """A MoCo run folder and a SEED student folder (tiny, saved with save_pretrained)."""
    from helpers import tiny_student

    moco, seed = tiny_moco().eval(), tiny_student().eval()
    moco.save_pretrained(tmp_path / "moco")
    seed.save_pretrained(tmp_path / "seed")
    return {"moco": (tmp_path / "moco", moco), "seed": (tmp_path / "seed", seed)}


@pytest.mark.parametrize(
    "kwargs,flag",
    [
        (dict(checkpoint="/nonexistent.pth"), "--teacher_checkpoint"),
        (dict(model_args={"drop_rate": 0.1}), "--teacher_model_args"),
        (dict(embedding="cls"), "--teacher_embedding"),
        (dict(in_chans=1), "in_chans"),
    ],
)
def test_seed_hf_folder_refuses_the_arguments_it_cannot_honour(tmp_path, kwargs, flag):
    for folder, _ in _seed_hf_folders(tmp_path).values():
        with pytest.raises(ValueError, match=flag) as refused:
            load_teacher(str(folder), **kwargs)
        assert "\n" not in str(refused.value)


def test_seed_hf_folder_without_head_gives_its_pooled_backbone_features(tmp_path):
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    for folder, model in _seed_hf_folders(tmp_path).values():
        with_head, pooled = load_teacher(str(folder)), load_teacher(str(folder), use_head=False)
        features = model.get_features(x)
        expected = torch.nn.functional.normalize(model.head(features), dim=1)
        assert torch.allclose(with_head(x), expected, atol=1e-5)
        assert pooled.embed_dim == features.shape[1] != with_head.embed_dim
        assert torch.allclose(pooled(x), torch.nn.functional.normalize(features, dim=1), atol=1e-5)
        assert (with_head.record.embedding, pooled.record.embedding) == ("head", "pooled")


def test_a_folder_teachers_fingerprint_is_of_the_weights_it_loads(tmp_path):
    from seed_hf.teachers.fingerprint import weights_fingerprint

    folders = {kind: str(folder) for kind, (folder, _) in _seed_hf_folders(tmp_path).items()}
    for folder in folders.values():  # a checkpoint given with a folder is not what the folder loads
        assert weights_fingerprint(folder, "/nonexistent.pth") == weights_fingerprint(folder) is not None
    # so another folder teacher with the same checkpoint flag is another teacher (RunFolder.decide refuses it)
    assert weights_fingerprint(folders["moco"], "/nonexistent.pth") != weights_fingerprint(
        folders["seed"], "/nonexistent.pth"
    )
    _moco_v2_checkpoint(tmp_path / "moco.pth.tar")  # a timm name loads its checkpoint: that is hashed
    assert weights_fingerprint("test_resnet", tmp_path / "moco.pth.tar") not in (
        None,
        weights_fingerprint(folders["moco"]),
    )
    with pytest.raises(FileNotFoundError, match="teacher_checkpoint"):  # a missing one is still refused
        load_teacher("test_resnet", tmp_path / "nonexistent.pth")


def test_timm_and_transformers_teachers_refuse_the_arguments_of_other_kinds(tmp_path):
    with pytest.raises(ValueError, match="--teacher_embedding"):
        load_teacher("test_resnet", allow_random=True, embedding="cls")
    _tiny_transformers_model("vit", tmp_path)
    with pytest.raises(ValueError, match="--teacher_checkpoint"):
        load_teacher(str(tmp_path), checkpoint=tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="--teacher_model_args"):
        load_teacher(str(tmp_path), model_args={"drop_rate": 0.1})


def test_run_seed_refuses_a_checkpoint_flag_with_a_run_folder_teacher(tmp_path, monkeypatch):
    from seed_hf.scripts import run_seed

    folder = tmp_path / "moco"
    tiny_moco().save_pretrained(folder)

    def load_then_stop(*args, **kwargs):  # what the old code did: load the folder's weights, then train
        load_teacher(*args, **kwargs)
        raise RuntimeError("the teacher was loaded")

    monkeypatch.setattr(run_seed, "load_teacher", load_then_stop)
    argv = ["--teacher_name_or_path", str(folder), "--teacher_checkpoint", "/nonexistent.pth"]
    argv += ["--output_dir", str(tmp_path / "out"), "--use_cpu", "--report_to", "none"]
    with pytest.raises(ValueError, match="--teacher_checkpoint"):
        run_seed.main(argv)
