"""ISTR official-checkpoint converter: tensors land in place, the ResNet depth, other models refused."""
import pytest
import torch

from models.istr import ISTR
from models.istr.convert import convert_istr_official, official_settings


def official_state_dict(num_classes=5, hidden=32, queries=7, stages=2, feedforward=48, dynamic=8, k=12, mask=14):
    """An ISTR V1 checkpoint in the documented detectron2 layout (reference section 5) for a ResNet-18 body."""
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    state = {"backbone.bottom_up.stem.conv1.weight": rand(64, 3, 7, 7)}
    norm = lambda prefix, c: {f"{prefix}.norm.{n}": rand(c) if n != "running_var" else torch.rand(c) + 0.5  # noqa
                              for n in ("weight", "bias", "running_mean", "running_var")}
    state.update(norm("backbone.bottom_up.stem.conv1", 64))
    channels = {2: 64, 3: 128, 4: 256, 5: 512}
    for stage_index, width in channels.items():
        for block in range(2):
            prefix = f"backbone.bottom_up.res{stage_index}.{block}"
            in_width = channels.get(stage_index - 1, 64) if block == 0 else width
            state[f"{prefix}.conv1.weight"] = rand(width, in_width, 3, 3)
            state.update(norm(f"{prefix}.conv1", width))
            state[f"{prefix}.conv2.weight"] = rand(width, width, 3, 3)
            state.update(norm(f"{prefix}.conv2", width))
            if block == 0 and stage_index > 2:
                state[f"{prefix}.shortcut.weight"] = rand(width, in_width, 1, 1)
                state.update(norm(f"{prefix}.shortcut", width))
        state[f"backbone.fpn_lateral{stage_index}.weight"] = rand(hidden, width, 1, 1)
        state[f"backbone.fpn_lateral{stage_index}.bias"] = rand(hidden)
        state[f"backbone.fpn_output{stage_index}.weight"] = rand(hidden, hidden, 3, 3)
        state[f"backbone.fpn_output{stage_index}.bias"] = rand(hidden)
    state["pos_embeddings.weight"] = rand(queries, hidden)
    state["init_proposal_boxes.weight"] = torch.rand(queries, 4, generator=generator)
    components = torch.linalg.qr(rand(mask * mask, k))[0].T.contiguous()
    state["mask_encoding.components"] = components
    state["mask_encoding.explained_variances"] = torch.rand(k, generator=generator) + 0.5
    state["mask_encoding.means"] = rand(mask * mask)
    for i in range(stages):
        p = f"head.head_series.{i}."
        state.update({
            p + "self_attn.in_proj_weight": rand(3 * hidden, hidden), p + "self_attn.in_proj_bias": rand(3 * hidden),
            p + "self_attn.out_proj.weight": rand(hidden, hidden), p + "self_attn.out_proj.bias": rand(hidden),
            p + "inst_interact.dynamic_layer.weight": rand(2 * hidden * dynamic, hidden),
            p + "inst_interact.dynamic_layer.bias": rand(2 * hidden * dynamic),
            p + "inst_interact.norm1.weight": rand(dynamic), p + "inst_interact.norm1.bias": rand(dynamic),
            p + "inst_interact.norm2.weight": rand(hidden), p + "inst_interact.norm2.bias": rand(hidden),
            p + "inst_interact.out_layer.weight": rand(hidden, hidden * 49), p + "inst_interact.out_layer.bias": rand(hidden),
            p + "inst_interact.norm3.weight": rand(hidden), p + "inst_interact.norm3.bias": rand(hidden),
            p + "linear1.weight": rand(feedforward, hidden), p + "linear1.bias": rand(feedforward),
            p + "linear2.weight": rand(hidden, feedforward), p + "linear2.bias": rand(hidden),
            p + "class_logits.weight": rand(num_classes, hidden), p + "class_logits.bias": rand(num_classes),
            p + "bboxes_delta.weight": rand(4, hidden), p + "bboxes_delta.bias": rand(4),
            p + "mask_logits.weight": rand(k, hidden), p + "mask_logits.bias": rand(k),
        })
        for n in (1, 2, 3):
            state[p + f"norm{n}.weight"], state[p + f"norm{n}.bias"] = rand(hidden), rand(hidden)
        for tower in ("cls_module", "reg_module", "mask_module"):
            for layer in (0, 3, 6):
                state[p + f"{tower}.{layer}.weight"] = rand(hidden, hidden)
                state[p + f"{tower}.{layer + 1}.weight"] = rand(hidden)
                state[p + f"{tower}.{layer + 1}.bias"] = rand(hidden)
    return state


def test_official_checkpoint_converts_and_its_tensors_land_in_place(tmp_path):
    state = official_state_dict()
    source = tmp_path / "istr_official.pth"
    torch.save({"model": state, "iteration": 270000}, source)
    out = convert_istr_official(str(source), str(tmp_path / "istr.ckpt"))
    model = ISTR.load_from_checkpoint(out).eval()
    hp = model.hparams
    assert (hp.num_classes, hp.backbone, hp.num_queries, hp.num_stages, hp.fpn_channels) == (5, "resnet18", 7, 2, 32)
    assert (hp.codec_components, hp.codec_mask_size, hp.dynamic_dim, hp.dim_feedforward) == (12, 14, 8, 48)
    own = model.state_dict()
    pairs = {
        "backbone.bottom_up.stem.conv1.weight": "backbone.model.conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.running_var": "backbone.model.bn1.running_var",
        "backbone.bottom_up.res3.0.shortcut.weight": "backbone.model.layer2.0.downsample.0.weight",
        "backbone.bottom_up.res5.1.conv2.norm.bias": "backbone.model.layer4.1.bn2.bias",
        "backbone.fpn_lateral2.weight": "neck.fpn.inner_blocks.0.0.weight",
        "backbone.fpn_output5.bias": "neck.fpn.layer_blocks.3.0.bias",
        "head.head_series.1.inst_interact.dynamic_layer.weight": "head.stages.1.inst_interact.dynamic_layer.weight",
        "head.head_series.0.mask_module.4.bias": "head.stages.0.mask_module.4.bias",
        "head.head_series.1.class_logits.bias": "head.stages.1.class_logits.bias",
        "mask_encoding.components": "codec.components",
        "mask_encoding.explained_variances": "codec.explained_variance",
        "mask_encoding.means": "codec.mean",
        "pos_embeddings.weight": "pos_embeddings.weight",
    }
    for official, ours in pairs.items():
        torch.testing.assert_close(own[ours], state[official], rtol=0, atol=0)
    assert bool(model.codec.ready)
    with torch.no_grad():
        predictions = model([torch.rand(3, 64, 80)])
    assert predictions[0]["masks"].shape[-2:] == (64, 80)

    del state["head.head_series.0.linear1.bias"]
    state["head.head_series.0.extra.weight"] = torch.zeros(1)
    torch.save(state, source)
    with pytest.raises(ValueError, match=r"missing \['head.stages.0.linear1.bias'\].*unused \['head.stages.0.extra"):
        convert_istr_official(str(source), str(tmp_path / "bad.ckpt"))


def test_converter_reads_the_resnet_depth_and_refuses_other_models(tmp_path):
    state = {key: value for key, value in official_state_dict(stages=1).items() if "bottom_up.res" not in key}
    for stage_index, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for block in range(blocks):
            state[f"backbone.bottom_up.res{stage_index}.{block}.conv3.weight"] = torch.zeros(1)
    assert official_settings(state, "x.pth")["backbone"] == "resnet50"
    state = {k: v for k, v in state.items() if "mask_logits" not in k}
    with pytest.raises(ValueError, match="only ISTR V1"):
        official_settings(state, "x.pth")
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "yolact.pth")
    with pytest.raises(ValueError, match="not an official ISTR V1"):
        convert_istr_official(str(tmp_path / "yolact.pth"), str(tmp_path / "x.ckpt"))
