"""Pre-trained Hugging Face backbones named ``hf:<folder or hub id>`` (issue 26 items 1-2) and
the hub cases of issue 34 (9: weights that do not match their config; 15: a config naming a
hub backbone; 17: wrongly typed or absurd fields), plus the content-keyed feature cache.

Every model is tiny, random and built here with ``save_pretrained``: nothing is downloaded,
and the tests that name hub ids forbid network access outright."""

import json
import socket

import numpy as np
import pytest
import torch
from PIL import Image

from fewshot.cli import main
from fewshot.errors import CheckpointError, ConfigError
from fewshot.features import FeatureCache, embed, fingerprint
from fewshot.models.hub import build_hub_backbone, load_backbone
from fewshot.select.index import Zoo

transformers = pytest.importorskip("transformers", reason="the hub extra (transformers) is not installed")


def _processor(name):
    """The Pillow implementation of a transformers image processor (v5 names it ...Pil; v4 has only one)."""
    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    resnet = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
                                       layer_type="basic", num_labels=3,
                                       id2label={0: "cat", 1: "dog", 2: "owl"}, label2id={"cat": 0, "dog": 1, "owl": 2})
    transformers.ResNetForImageClassification(resnet).eval().save_pretrained(root / "resnet")
    _processor("ViTImageProcessor")(size={"height": 20, "width": 24}, image_mean=[0.2, 0.3, 0.4],
                                    image_std=[0.5, 0.6, 0.7], resample=2).save_pretrained(root / "resnet")
    vit = dict(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=32)
    transformers.ViTModel(transformers.ViTConfig(**vit), add_pooling_layer=False).save_pretrained(root / "vit")
    _processor("ViTImageProcessor")(size={"height": 16, "width": 16}).save_pretrained(root / "vit")
    transformers.ViTForImageClassification(transformers.ViTConfig(**vit, num_labels=2)).save_pretrained(root / "vitc")
    text = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    transformers.CLIPModel(transformers.CLIPConfig(vision_config={**vit, "projection_dim": 8}, text_config=text,
                                                   projection_dim=8)).save_pretrained(root / "clip")
    _processor("CLIPImageProcessor")(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}
                                     ).save_pretrained(root / "clip")
    return root


def _copy(src, dst, config=None, preprocessor=None):
    """A copy of the folder ``src`` with config.json / preprocessor_config.json replaced."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    if preprocessor is not None:
        (dst / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return dst


def _config(folder):
    return json.loads((folder / "config.json").read_text())


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_resnet_keeps_its_classifier_head_and_its_own_preprocessing(folders):
    hub = load_backbone(f"hf:{folders / 'resnet'}")
    assert hub.labels == ["cat", "dog", "owl"] and isinstance(hub.head, torch.nn.Linear)
    assert hub.head.out_features == 3 and hub.feature_dim == 8 == hub.head.in_features
    assert hub.preprocessing.size == (20, 24) and hub.preprocessing.mean == (0.2, 0.3, 0.4)
    assert hub.preprocessing.std == (0.5, 0.6, 0.7) and hub.metadata["source"]["classes"] == ["cat", "dog", "owl"]
    # The features are what the classifier reads: the kept head gives the transformers model's logits.
    original = transformers.ResNetForImageClassification.from_pretrained(str(folders / "resnet")).eval()
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(31, 45), (50, 23)]]
    x = hub.preprocessing.prepare(photos)
    assert x.shape == (2, 3, 20, 24)
    # The folder's processor, run by transformers, gives the same pixels the backbone sees.
    processor = _processor("ViTImageProcessor").from_pretrained(str(folders / "resnet"))
    expected = processor(images=photos, return_tensors="pt")["pixel_values"]
    seen = (x - hub.backbone.mean) / hub.backbone.std
    assert torch.allclose(seen, expected, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(hub.head(hub.backbone(x)), original(pixel_values=expected).logits, atol=1e-4)
    # The same through the public path: embed() prepares the photos itself, logits() applies the head.
    assert torch.allclose(hub.logits(hub.embed(photos)), original(pixel_values=expected).logits, atol=1e-4)


def test_vit_features_are_the_cls_token_and_a_vit_classifier_keeps_its_head(folders):
    hub = load_backbone(f"hf:{folders / 'vit'}")
    assert hub.head is None and hub.labels == [] and hub.metadata["objective"] == "feature-extraction"
    assert hub.preprocessing.mean == (0.5, 0.5, 0.5) and hub.preprocessing.size == (16, 16)
    original = transformers.ViTModel.from_pretrained(str(folders / "vit"), add_pooling_layer=False).eval()
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        cls = original(pixel_values=(x - 0.5) / 0.5).last_hidden_state[:, 0]
        assert torch.allclose(hub.backbone(x), cls, atol=1e-5)
    head = load_backbone(f"hf:{folders / 'vitc'}")
    model = transformers.ViTForImageClassification.from_pretrained(str(folders / "vitc")).eval()
    with torch.no_grad():
        normalised = (x - head.backbone.mean) / head.backbone.std
        assert torch.allclose(head.head(head.backbone(x)), model(pixel_values=normalised).logits, atol=1e-5)


def test_clip_vision_tower_from_a_full_clip_folder(folders):
    hub = load_backbone(f"hf:{folders / 'clip'}")
    assert hub.backbone.pooling == "pooler" and hub.feature_dim == 16
    assert hub.preprocessing.crop == (16, 16) and hub.preprocessing.resample == 3  # bicubic, as saved
    model = transformers.CLIPModel.from_pretrained(str(folders / "clip")).eval()
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    processor = _processor("CLIPImageProcessor").from_pretrained(str(folders / "clip"))
    pixels = processor(images=[photo], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        got = hub.backbone(hub.preprocessing.prepare([photo]))
        assert torch.allclose(got, model.vision_model(pixel_values=pixels).pooler_output, atol=1e-4)


def _empty_hub_cache(cache, monkeypatch):
    """Point huggingface_hub at an empty cache (it reads HF_HUB_CACHE once, at import)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_an_uncached_hub_id_is_one_line_and_no_network(tmp_path, monkeypatch, no_network):
    _empty_hub_cache(tmp_path / "hf-home" / "hub", monkeypatch)
    with pytest.raises(CheckpointError) as e:
        load_backbone("hf:someone/no-such-model")
    message = str(e.value)
    assert "\n" not in message and "huggingface-cli download someone/no-such-model" in message
    with pytest.raises(CheckpointError, match="no such folder"):
        load_backbone(f"hf:{tmp_path / 'missing'}")


def test_a_cached_hub_id_loads_offline(folders, tmp_path, monkeypatch, no_network):
    cache = _empty_hub_cache(tmp_path / "hf-home" / "hub", monkeypatch)
    commit = "0" * 40  # the layout huggingface_hub's own downloads leave in the cache
    (cache / "models--someone--tiny-vit" / "refs").mkdir(parents=True)
    (cache / "models--someone--tiny-vit" / "refs" / "main").write_text(commit)
    _copy(folders / "vit", cache / "models--someone--tiny-vit" / "snapshots" / commit)
    hub = load_backbone("hf:someone/tiny-vit")
    assert hub.feature_dim == 16 and hub.metadata["hub"]["name"] == "hf:someone/tiny-vit"


def test_case9_weights_that_do_not_match_the_config_are_refused(folders, tmp_path, capsys):
    narrower = {**_config(folders / "resnet"), "hidden_sizes": [8, 16]}  # a wrong shape
    deeper = {**_config(folders / "resnet"), "depths": [2, 1]}  # weights missing
    shallower = {**_config(folders / "vit"), "num_hidden_layers": 0}  # unexpected weights in the backbone
    for name, config, src in [("narrow", narrower, "resnet"), ("deep", deeper, "resnet"),
                              ("shallow", shallower, "vit")]:
        folder = _copy(folders / src, tmp_path / name, config)
        with pytest.raises(CheckpointError) as e:
            load_backbone(f"hf:{folder}")
        message = str(e.value)
        assert "\n" not in message and "model.safetensors" in message, message
        assert "does not match config.json" in message or "do not belong together" in message, message
    # A ResNet's config beside a ViT's weights: refused before anything of the config's size is built.
    swapped = _copy(folders / "vit", tmp_path / "swapped", _config(folders / "resnet"))
    with pytest.raises(CheckpointError, match="does not match config.json|do not belong together"):
        load_backbone(f"hf:{swapped}")
    # A weight saved under another name: the sizes add up, transformers' loading report does not.
    from fewshot.io import load_tensors, save_tensors

    renamed = _copy(folders / "resnet", tmp_path / "renamed")
    tensors = load_tensors(renamed / "model.safetensors")
    key = next(k for k in tensors if k.endswith("convolution.weight"))
    tensors[key.replace("convolution", "conv")] = tensors.pop(key)
    save_tensors(renamed / "model.safetensors", tensors, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="1 backbone weights missing, 0 of the wrong shape, 1 unexpected"):
        load_backbone(f"hf:{renamed}")
    # Through the zoo: exit 2, one line, and the zoo unchanged.
    zoo = tmp_path / "zoo"
    assert main(["zoo", "add", "renamed", str(renamed), "--zoo", str(zoo)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "backbone weights missing" in err and "renamed" in err
    assert "renamed" not in Zoo(zoo, create=True)


def test_case15_a_config_naming_a_hub_backbone_is_refused_without_network(folders, tmp_path, capsys, no_network):
    dpt = {"model_type": "dpt", "backbone": "microsoft/resnet-50", "use_pretrained_backbone": True,
           "architectures": ["DPTForDepthEstimation"]}
    folder = _copy(folders / "vit", tmp_path / "dpt", dpt)
    with pytest.raises(CheckpointError) as e:
        load_backbone(f"hf:{folder}")
    assert "'backbone'" in str(e.value) and "microsoft/resnet-50" in str(e.value) and "\n" not in str(e.value)
    assert main(["zoo", "add", "dpt", str(folder), "--zoo", str(tmp_path / "zoo")]) == 2
    assert "never downloads" in capsys.readouterr().err
    # The same config in zoo metadata (rebuilding a zoo entry) is refused too.
    with pytest.raises(ConfigError, match="backbone"):
        build_hub_backbone([3, 16, 16], config={**dpt, "use_pretrained_backbone": False})


@pytest.mark.parametrize("file, field, value", [
    ("config.json", "num_channels", "abc"),
    ("config.json", "num_channels", 10 ** 6),
    ("config.json", "hidden_size", 10 ** 7),
    ("config.json", "image_size", -3),
    ("preprocessor_config.json", "image_std", ["a", "b", "c"]),
    ("preprocessor_config.json", "image_std", [0.5, 0.0, 0.5]),
    ("preprocessor_config.json", "crop_size", 10 ** 9),
    ("preprocessor_config.json", "size", {"height": 10 ** 5, "width": 16}),
    ("preprocessor_config.json", "resample", "bilinear"),
])
def test_case17_wrongly_typed_or_absurd_fields_are_one_line_naming_file_and_field(folders, tmp_path, file, field,
                                                                                  value, capsys):
    src = folders / "vit"
    values = json.loads((src / file).read_text())
    values[field] = value
    if field == "crop_size":
        values["do_center_crop"] = True
    folder = _copy(src, tmp_path / "bad", **{"config" if file == "config.json" else "preprocessor": values})
    with pytest.raises(CheckpointError) as e:
        load_backbone(f"hf:{folder}")
    message = str(e.value)
    assert "\n" not in message and f"{folder / file}: field '{field}'" in message, message
    assert main(["zoo", "add", "bad", str(folder), "--zoo", str(tmp_path / "zoo")]) == 2
    assert f"'{field}'" in capsys.readouterr().err


class Counting(torch.nn.Module):
    """A backbone that counts the images its forward sees."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, x):
        self.seen += x.shape[0]
        return self.inner(x)


def test_embedding_twice_runs_each_image_once_and_a_changed_weight_changes_the_key(folders, tmp_path, monkeypatch):
    hub = load_backbone(f"hf:{folders / 'vit'}")
    backbone = Counting(hub.backbone)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16 + i % 5, 16, 3), dtype=np.uint8) for i in range(50)]
    cache = FeatureCache()
    first = embed(backbone, images, hub.preprocessing, cache=cache, batch_size=16)
    assert first.shape == (50, 16) and backbone.seen == 50 and len(cache) == 50
    again = embed(backbone, images + images[:3], hub.preprocessing, cache=cache, batch_size=16)
    assert backbone.seen == 50 and torch.equal(again[:50], first) and torch.equal(again[50:], first[:3])
    # Without a cache each distinct image still runs once per call.
    embed(backbone, images[:5] * 3, hub.preprocessing, batch_size=4)
    assert backbone.seen == 55
    before = fingerprint(backbone)
    with torch.no_grad():
        next(backbone.parameters()).add_(0.5)
    assert fingerprint(backbone) != before
    changed = embed(backbone, images, hub.preprocessing, cache=cache)
    assert backbone.seen == 105 and not torch.allclose(changed, first)
    # Under autocast (--precision bf16) the features are another entry.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embed(backbone, images[:4], hub.preprocessing, cache=cache)
    assert backbone.seen == 109
    # A bounded memory: a budget of 10 vectors keeps the 10 most recent.
    small = FeatureCache(max_bytes=10 * 16 * 4)
    embed(backbone, images, hub.preprocessing, cache=small)
    assert len(small) == 10 and small.nbytes == 640


def test_the_disk_cache_is_reused_and_checked(folders, tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    hub = load_backbone(f"hf:{folders / 'vit'}")
    backbone = Counting(hub.backbone)
    files = []
    for i in range(6):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(files[-1])
    first = embed(backbone, files, hub.preprocessing, cache=FeatureCache.from_env())
    stored = sorted((tmp_path / "cache" / "features").rglob("*.safetensors"))
    assert backbone.seen == 6 and len(stored) == 6
    again = embed(backbone, files, hub.preprocessing, cache=FeatureCache.from_env())  # a new process's cache
    assert backbone.seen == 6 and torch.equal(again, first)
    from fewshot.io import save_tensors

    save_tensors(stored[0], {"features": torch.zeros(16, dtype=torch.float64)})  # damaged: wrong dtype
    third = embed(backbone, files, hub.preprocessing, cache=FeatureCache.from_env())
    assert backbone.seen == 7 and torch.equal(third, first)
    # Another resize is another key.
    from dataclasses import replace

    embed(backbone, files, replace(hub.preprocessing, resample=3), cache=FeatureCache.from_env())
    assert backbone.seen == 13
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "file"))
    with pytest.raises(ConfigError, match="is a file"):
        FeatureCache.from_env()


def test_a_datasets_float_tensors_are_prepared_like_their_8_bit_pixels(folders):
    """`evaluate hf:... --dataset D` embeds a fewshot dataset's tensors: floats in [0, 1], channels first."""
    hub = load_backbone(f"hf:{folders / 'vit'}")
    grey = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    as_float = hub.embed(grey.float() / 255)
    as_pixels = hub.embed([g[0].numpy() for g in grey])
    assert as_float.shape == (4, 16) and torch.allclose(as_float, as_pixels)
    from fewshot.errors import DataError

    with pytest.raises(DataError, match=r"\[0, 1\]"):
        hub.embed(grey.float())


@pytest.mark.parametrize("name, options", [
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 32}, "crop_pct": 0.875}),  # resize 36, crop 32
    ("ConvNextImageProcessor", {"size": {"shortest_edge": 384}}),  # a plain warp at 384 and above
    ("BitImageProcessor", {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}}),  # DINOv2's
    ("DeiTImageProcessor", {"size": {"height": 40, "width": 44}, "crop_size": {"height": 32, "width": 32}}),
])
def test_the_preprocessing_recipe_matches_transformers_own_processor(tmp_path, name, options):
    from fewshot.models.hub_config import read_preprocessing

    processor = _processor(name)(**options)
    processor.save_pretrained(tmp_path)
    prep = read_preprocessing(tmp_path, 3)
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(45, 61), (70, 41)]]
    expected = processor(images=photos, return_tensors="pt")["pixel_values"]
    mean, std = torch.tensor(prep.mean).view(1, 3, 1, 1), torch.tensor(prep.std).view(1, 3, 1, 1)
    assert torch.allclose((prep.prepare(photos) - mean) / std, expected, atol=1e-4)


def test_an_input_size_the_model_cannot_take_is_one_line(folders):
    with pytest.raises(ConfigError, match=r"does not take images of shape \[3, 24, 24\]"):
        load_backbone(f"hf:{folders / 'vit'}", image_shape=(3, 24, 24))
