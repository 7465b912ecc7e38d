"""Each atc flag export/onnx2om.py emits, checked against the ATC documentation: every test runs the
documentation's own example, or applies one of its stated rules, against the EMULATED atc (not against
our graph), so the emulator that the NPU tests lean on says yes and no where atc's docs do.

Pages are cited by their id on hiascend.com: atlasatcparam_16_00xx are the ATC parameter pages of
CANN commercial 9.0.0 (document/detail/zh/canncommercial/900/devaids/atctool/<id>.html);
atctool_0000xx are the same pages in the Atlas 200I DK A2 (Ascend310B1) 23.0.RC2 appendix.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import shlex
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from emulator import emu_om, emu_precision, harness

pytestmark = pytest.mark.emulator


@functools.cache
def atc_module():
    """The emulated atc script as a module (it has no .py suffix, so a loader is named explicitly)."""
    loader = SourceFileLoader("emulated_atc", str(harness.EMULATOR / "atc"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def run_atc(*flags: str) -> tuple[int, str]:
    """The emulated atc's main() in this process: (exit code, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = atc_module().main(list(flags))
    return code, err.getvalue()


def save(graph: onnx.GraphProto, path: Path) -> Path:
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def docs_three_inputs(folder: Path) -> Path:
    """The model of the --dynamic_dims example: data(1,1,40,T), label(1,T), mask(T,T), each summed."""
    shapes = {"data": [1, 1, 40, "T"], "label": [1, "T"], "mask": ["T", "T"]}
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shapes.items()]
    nodes = [helper.make_node("ReduceSum", [n], [f"{n}_sum"], keepdims=0) for n in shapes]
    nodes += [helper.make_node("Add", ["data_sum", "label_sum"], ["ab"]),
              helper.make_node("Add", ["ab", "mask_sum"], ["out"])]
    out = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])]
    return save(helper.make_graph(nodes, "docs_example", inputs, out), folder / "docs_example.onnx")


def one_input(folder: Path, dims: list, name: str = "data.onnx") -> Path:
    """data -> Relu -> out, with the given (possibly symbolic) dims."""
    graph = helper.make_graph([helper.make_node("Relu", ["data"], ["out"])], "one",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, dims)])
    return save(graph, folder / name)


def base(model: Path, out: Path, soc: str = "Ascend310B1") -> list[str]:
    return ["--framework=5", f"--model={model}", f"--output={out}", f"--soc_version={soc}"]


def header(om: Path) -> dict:
    return emu_om.read_header_file(om)


# --dynamic_dims ------------------------------------------------------------------------------------

def test_dynamic_dims_docs_example_with_three_inputs_compiles(tmp_path):
    """atlasatcparam_16_0020, example "若网络模型有多个输入": --input_shape="data:1,1,40,-1;label:1,-1;mask:-1,-1"
    --dynamic_dims="20,20,1,1;40,40,2,2;80,60,4,4" --input_format=ND gives profile 0 = data(1,1,40,20) +
    label(1,20) + mask(1,1), profile 1 = (1,1,40,40)+(1,40)+(2,2), profile 2 = (1,1,40,80)+(1,60)+(4,4).
    The values pair with the -1 dims by position, even where the docs' graph names all of them T."""
    model = docs_three_inputs(tmp_path)
    code, err = run_atc(*base(model, tmp_path / "m"), "--input_shape=data:1,1,40,-1;label:1,-1;mask:-1,-1",
                        "--dynamic_dims=20,20,1,1;40,40,2,2;80,60,4,4", "--input_format=ND")
    assert code == 0, err
    h = header(tmp_path / "m.om")
    shapes = [emu_om.static_shapes(h["inputs"], p) for p in h["profiles"]]
    assert shapes == [[[1, 1, 40, 20], [1, 20], [1, 1]], [[1, 1, 40, 40], [1, 40], [2, 2]],
                      [[1, 1, 40, 80], [1, 60], [4, 4]]]


@pytest.mark.parametrize("shape, dims, want", [
    ("data:1,-1", "4;8;16;64", [[1, 4], [1, 8], [1, 16], [1, 64]]),
    ("data:1,-1,-1", "1,2;3,4;5,6;7,8", [[1, 1, 2], [1, 3, 4], [1, 5, 6], [1, 7, 8]]),
])
def test_dynamic_dims_docs_single_input_examples_compile(tmp_path, shape, dims, want):
    """atlasatcparam_16_0020, example "若网络模型只有一个输入": data:1,-1 with "4;8;16;64" supports 1,4; 1,8;
    1,16; 1,64, and data:1,-1,-1 with "1,2;3,4;5,6;7,8" supports 1,1,2; 1,3,4; 1,5,6; 1,7,8."""
    model = one_input(tmp_path, [1] + ["d"] * (shape.count(",")))
    code, err = run_atc(*base(model, tmp_path / "m"), f"--input_shape={shape}", f"--dynamic_dims={dims}",
                        "--input_format=ND")
    assert code == 0, err
    h = header(tmp_path / "m.om")
    assert [emu_om.static_shapes(h["inputs"], p)[0] for p in h["profiles"]] == want


def test_dynamic_dims_profile_with_the_wrong_count_of_values_is_refused(tmp_path):
    """atlasatcparam_16_0020, 参数值格式: each profile lists one value per -1 of --input_shape,
    "--input_shape参数中有几个-1，则每档必须设置几个维度"; the docs' model has four -1 dims."""
    model = docs_three_inputs(tmp_path)
    code, err = run_atc(*base(model, tmp_path / "m"), "--input_shape=data:1,1,40,-1;label:1,-1;mask:-1,-1",
                        "--dynamic_dims=20,20,1;40,40,2", "--input_format=ND")
    assert code == 1 and "has 3 values, --input_shape has 4 -1 dims" in err


@pytest.mark.parametrize("count, ok", [(1, False), (2, True), (100, True), (101, False)])
def test_dynamic_dims_takes_2_to_100_profiles(tmp_path, count, ok):
    """atlasatcparam_16_0020, 参数值约束: 档位数取值范围为(1,100], at least 2 profiles and at most 100."""
    model = one_input(tmp_path, [1, "n"])
    code, err = run_atc(*base(model, tmp_path / "m"), "--input_shape=data:1,-1",
                        "--dynamic_dims=" + ";".join(str(n) for n in range(1, count + 1)), "--input_format=ND")
    assert (code == 0) == ok, err
    assert ok or "atc accepts 2 to 100" in err


def test_dynamic_dims_sets_at_most_4_dims_per_profile(tmp_path):
    """atctool_000056 (--dynamic_dims, Atlas 200I DK A2 23.0.RC2): 每档最多支持任意指定4个维度. (Later versions
    dropped the sentence; onnx2om.py's profiles set exactly 4.)"""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "a", "b"]),
              helper.make_tensor_value_info("y", TensorProto.FLOAT, ["c", "d", "e"])]
    nodes = [helper.make_node("ReduceSum", [n], [f"{n}_sum"], keepdims=0) for n in "xy"]
    nodes.append(helper.make_node("Add", ["x_sum", "y_sum"], ["out"]))
    out = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])]
    model = save(helper.make_graph(nodes, "five", inputs, out), tmp_path / "five.onnx")
    code, err = run_atc(*base(model, tmp_path / "m"), "--input_shape=x:1,-1,-1;y:-1,-1,-1",
                        "--dynamic_dims=1,1,1,1,1;2,2,2,2,2", "--input_format=ND")
    assert code == 1 and "at most 4 per profile" in err


def test_dynamic_dims_needs_input_format_nd(tmp_path):
    """atlasatcparam_16_0020: dynamic dims are profiles "ND格式下" and the parameter works together with
    --input_format (关联参数); ONNX's default --input_format is NCHW (atlasatcparam_16_0015)."""
    model = one_input(tmp_path, [1, "n"])
    code, err = run_atc(*base(model, tmp_path / "m"), "--input_shape=data:1,-1", "--dynamic_dims=4;8")
    assert code == 1 and "--input_format=ND" in err


# --input_shape -------------------------------------------------------------------------------------

def test_input_shape_ranges_are_refused_on_ascend310b_and_compile_on_910b(tmp_path):
    """atlasatcparam_16_0016: a dim may be a range such as 1~10 (设置shape范围), except that
    "Atlas 200I/500 A2 推理产品 不支持设置shape范围" (Ascend310B)."""
    model = one_input(tmp_path, ["n", 8])
    code, err = run_atc(*base(model, tmp_path / "a"), "--input_shape=data:1~10,8")
    assert code == 1 and "not supported on Ascend310B1" in err
    code, err = run_atc(*base(model, tmp_path / "b", soc="Ascend910B1"), "--input_shape=data:1~10,8")
    assert code == 0, err
    assert header(tmp_path / "b.om")["inputs"][0]["shape"] == [[1, 10], 8]


def scalar_and_dynamic(folder: Path) -> Path:
    """The docs' A:[-1,c1,h1,w1], B:[] (scalar), C:[n2,c2,h2,w2] model."""
    inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, ["n", 3, 4, 4]),
              helper.make_tensor_value_info("B", TensorProto.FLOAT, []),
              helper.make_tensor_value_info("C", TensorProto.FLOAT, [2, 3, 4, 4])]
    nodes = [helper.make_node("Mul", ["A", "B"], ["AB"]), helper.make_node("ReduceSum", ["AB"], ["s"], keepdims=0),
             helper.make_node("ReduceSum", ["C"], ["t"], keepdims=0), helper.make_node("Add", ["s", "t"], ["out"])]
    return save(helper.make_graph(nodes, "abc", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])]),
                folder / "abc.onnx")


def test_input_shape_scalar_is_written_empty_and_must_be_named_with_profiles(tmp_path):
    """atlasatcparam_16_0016, 原始模型shape为标量: a scalar input is configured empty; with dynamic profiles it
    cannot be left out: "A:-1,c1,h1,w1;B:;C:n2,c2,h2,w2", 标量输入B必须配置."""
    model = scalar_and_dynamic(tmp_path)
    flags = ["--dynamic_dims=1;2", "--input_format=ND"]
    code, err = run_atc(*base(model, tmp_path / "a"), "--input_shape=A:-1,3,4,4;B:;C:2,3,4,4", *flags)
    assert code == 0, err
    assert header(tmp_path / "a.om")["inputs"][1]["shape"] == []
    code, err = run_atc(*base(model, tmp_path / "b"), "--input_shape=A:-1,3,4,4;C:2,3,4,4", *flags)
    assert code == 1 and "missing B" in err


def test_input_shape_names_must_be_the_models_input_names(tmp_path):
    """atlasatcparam_16_0016, 参数值约束: input_name必须是转换前的网络模型中的节点名称."""
    model = one_input(tmp_path, [1, 8])
    code, err = run_atc(*base(model, tmp_path / "m"), "--input_shape=images:1,8")
    assert code == 1 and "which the model does not have" in err


def test_input_shape_is_required_when_the_model_leaves_a_dim_open(tmp_path):
    """atlasatcparam_16_0016: 原始模型为非固定shape，--input_shape参数必须配置; for a fixed-shape model it is optional."""
    code, err = run_atc(*base(one_input(tmp_path, ["n", 8]), tmp_path / "a"))
    assert code == 1 and "--input_shape is required" in err
    code, err = run_atc(*base(one_input(tmp_path, [2, 8], "fixed.onnx"), tmp_path / "b"))
    assert code == 0, err


# --framework, --model, --output ---------------------------------------------------------------------

def test_framework_docs_onnx_example_writes_name_dot_om(tmp_path):
    """atlasatcparam_16_0014 (--framework), ONNX example "--mode=0 --framework=5
    --model=$HOME/module/resnet50.onnx --output=$HOME/module/out/onnx_resnet50 --soc_version=<soc_version>",
    and atlasatcparam_16_0029 (--output): the file is named as given and ends in .om: onnx_resnet50.om."""
    module = tmp_path / "module"
    module.mkdir()
    model = one_input(module, [1, 3, 8, 8], "resnet50.onnx")
    code, err = run_atc("--framework=5", f"--model={model}", f"--output={module}/out/onnx_resnet50",
                        "--soc_version=Ascend310B1")
    assert code == 0, err
    assert [p.name for p in (module / "out").iterdir()] == ["onnx_resnet50.om"]


@pytest.mark.parametrize("value", ["2", "6", "onnx"])
def test_framework_takes_the_documented_values_only(tmp_path, value):
    """atlasatcparam_16_0014, 参数取值: 0 Caffe, 1 MindSpore, 3 TensorFlow, 5 ONNX."""
    code, err = run_atc(*base(one_input(tmp_path, [1, 8]), tmp_path / "m")[1:], f"--framework={value}")
    assert code == 1 and "expected one of 0 (Caffe), 1 (MindSpore), 3 (TensorFlow), 5 (ONNX)" in err


def test_framework_is_required(tmp_path):
    """atlasatcparam_16_0014: 当--mode为0或3时，该参数必选 (0, model conversion, is atc's default mode)."""
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(io.StringIO()):
        atc_module().main(base(one_input(tmp_path, [1, 8]), tmp_path / "m")[1:])
    assert e.value.code == 2


@pytest.mark.parametrize("flag", ["model", "output"])
def test_paths_take_letters_digits_and_underscore_dash_dot_only(tmp_path, flag):
    """atlasatcparam_16_0011 (--model) and atlasatcparam_16_0029 (--output), 参数值格式: 路径和文件名：支持大小写字母、
    数字、下划线（_）、短横线（-）、句点（.）、中文汉字 -- so a space or a '+' is refused."""
    folder = tmp_path / "my models+"
    folder.mkdir()
    model = one_input(folder if flag == "model" else tmp_path, [1, 8])
    out = (folder if flag == "output" else tmp_path) / "m"
    code, err = run_atc("--framework=5", f"--model={model}", f"--output={out}", "--soc_version=Ascend310B1")
    assert code == 1 and f"--{flag}=" in err and "letters, digits" in err


# --input_format -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, ok", [("NCHW", True), ("ND", True), ("NCDHW", True), ("NHWC", False)])
def test_input_format_takes_nchw_ncdhw_nd_for_onnx(tmp_path, fmt, ok):
    """atlasatcparam_16_0015: 当原始框架为ONNX时，支持NCHW、NCDHW、ND三种格式 (NHWC is TensorFlow's)."""
    code, err = run_atc(*base(one_input(tmp_path, [1, 3, 8, 8]), tmp_path / "m"), f"--input_format={fmt}")
    assert (code == 0) == ok, err


def test_input_format_nd_covers_ranks_up_to_4(tmp_path):
    """atlasatcparam_16_0015: ND（表示支持任意维度格式，N<=4）."""
    code, err = run_atc(*base(one_input(tmp_path, [1, 2, 3, 4, 5]), tmp_path / "m"), "--input_format=ND")
    assert code == 1 and "ranks up to 4" in err


# --soc_version ------------------------------------------------------------------------------------

def test_soc_version_docs_example_and_an_unknown_chip(tmp_path):
    """atctool_000066 (--soc_version, CANN 6.2.RC1, Ascend310B): example --soc_version=Ascend310B1; the value
    must be the chip's name ("请使用与芯片名相对应的<soc_version>取值"); the .om records it (acl refuses
    other chips)."""
    model = one_input(tmp_path, [1, 8])
    assert run_atc(*base(model, tmp_path / "a"))[0] == 0
    assert header(tmp_path / "a.om")["soc_version"] == "Ascend310B1"
    code, err = run_atc(*base(model, tmp_path / "b", soc="Ascend310B9"))
    assert code == 1 and "unknown chip" in err


# --precision_mode_v2 / --precision_mode ------------------------------------------------------------

@pytest.mark.parametrize("mode", ["fp16", "origin", "cube_fp16in_fp32out", "mixed_float16", "mixed_hif8", "cube_hif8"])
def test_precision_mode_v2_documented_values_are_accepted(tmp_path, mode):
    """atlasatcparam_16_0069 (and atc --help): fp16 (default), origin, cube_fp16in_fp32out, mixed_float16,
    mixed_bfloat16, cube_hif8, mixed_hif8 (bfloat16: next test). hif8 is accepted but not emulated."""
    code, err = run_atc(*base(one_input(tmp_path, [1, 8]), tmp_path / "m"), f"--precision_mode_v2={mode}")
    assert code == 0, err
    h = header(tmp_path / "m.om")
    assert h["precision_mode"] == mode and h["precision"]["numerics_emulated"] == ("hif8" not in mode)


def test_bfloat16_modes_only_on_atlas_a2_training(tmp_path):
    """atlasatc_16_0102 (--modify_mixlist, CANN 8.0.RC2) and aoepar_16_042 (--precision_mode):
    mixed_bfloat16 / allow_mix_precision_bf16 "仅Atlas A2训练系列产品场景支持此配置" (Ascend910B)."""
    model = one_input(tmp_path, [1, 8])
    code, err = run_atc(*base(model, tmp_path / "a"), "--precision_mode_v2=mixed_bfloat16")
    assert code == 1 and "Atlas A2 training" in err
    assert run_atc(*base(model, tmp_path / "b", soc="Ascend910B1"), "--precision_mode_v2=mixed_bfloat16")[0] == 0


@pytest.mark.parametrize("flags, message", [
    (["--precision_mode_v2=fp8"], "expected one of"),
    (["--precision_mode_v2=allow_mix_precision"], "expected one of"),      # a v1 value given to v2
    (["--precision_mode=mixed_float16"], "expected one of"),               # a v2 value given to v1
    (["--precision_mode_v2=fp16", "--precision_mode=force_fp16"], "cannot be used together"),
])
def test_precision_modes_refuse_unknown_values_and_each_other(tmp_path, flags, message):
    """atlasatcparam_16_0069: the documented value list, and 该参数不能与--precision_mode参数同时使用."""
    code, err = run_atc(*base(one_input(tmp_path, [1, 8]), tmp_path / "m"), *flags)
    assert code == 1 and message in err


def test_precision_mode_v1_must_keep_origin_dtype_runs_the_graphs_own_dtype(tmp_path):
    """atlasatc_16_0096 (--precision_mode, CANN 7.0.0): must_keep_origin_dtype 保持原图精度."""
    model = one_input(tmp_path, [1, 8])
    assert run_atc(*base(model, tmp_path / "m"), "--precision_mode=must_keep_origin_dtype")[0] == 0
    precision = header(tmp_path / "m.om")["precision"]
    assert precision["lowered_ops"] == {} and precision["float32_ops"] == {"Relu": 1}


# --modify_mixlist ---------------------------------------------------------------------------------

DOCS_MIXLIST = {"black-list": {"to-remove": ["OpTypeA"], "to-add": ["OpTypeB"]},
                "white-list": {"to-remove": ["OpTypeC"], "to-add": ["OpTypeD"]}}


def test_modify_mixlist_docs_sample_is_accepted(tmp_path):
    """atlasatcparam_16_0071, 混合精度名单样例 (ops_info.json with black-list/white-list, to-remove/to-add)."""
    mixlist = tmp_path / "ops_info.json"
    mixlist.write_text(json.dumps(DOCS_MIXLIST))
    code, err = run_atc(*base(one_input(tmp_path, [1, 8]), tmp_path / "m"), "--precision_mode_v2=mixed_float16",
                        f"--modify_mixlist={mixlist}")
    assert code == 0, err
    assert header(tmp_path / "m.om")["mixlist"] == DOCS_MIXLIST


@pytest.mark.parametrize("name, text, message", [
    ("ops_info.json", json.dumps({"blacklist": ["Pow"]}), "unexpected entry"),
    ("ops_info.json", json.dumps({"black-list": {"to-add": "Pow"}}), "to-add/to-remove lists"),
    ("ops_info.json", json.dumps({"black-list": {"add": ["Pow"]}}), "to-add/to-remove lists"),
    ("ops_info.json", "black-list: Pow", "not JSON"),
    ("ops_info.txt", json.dumps({"black-list": {"to-add": ["Pow"]}}), "*.json file"),
])
def test_modify_mixlist_in_the_wrong_format_is_refused(tmp_path, name, text, message):
    """atlasatcparam_16_0071, 参数值约束: 名单格式为*.json格式, with the sample's black-list/white-list objects of
    to-add/to-remove op type lists."""
    mixlist = tmp_path / name
    mixlist.write_text(text)
    code, err = run_atc(*base(one_input(tmp_path, [1, 8]), tmp_path / "m"), "--precision_mode_v2=mixed_float16",
                        f"--modify_mixlist={mixlist}")
    assert code == 1 and message in err


def test_modify_mixlist_needs_a_mixed_precision_mode(tmp_path):
    """atlasatcparam_16_0071, 关联参数: the mixlist applies with --precision_mode_v2 mixed_float16 /
    mixed_bfloat16 / mixed_hif8 or --precision_mode allow_mix_precision*; fp16 is not one of them."""
    mixlist = tmp_path / "ops_info.json"
    mixlist.write_text(json.dumps(DOCS_MIXLIST))
    model = one_input(tmp_path, [1, 8])
    code, err = run_atc(*base(model, tmp_path / "a"), "--precision_mode_v2=fp16", f"--modify_mixlist={mixlist}")
    assert code == 1 and "mixed precision mode" in err
    assert run_atc(*base(model, tmp_path / "b"), "--precision_mode=allow_mix_precision",
                   f"--modify_mixlist={mixlist}")[0] == 0


@pytest.mark.parametrize("mixlist, kind", [
    ({"black-list": {"to-add": ["MatMulV2"]}}, "black"),                                           # case 1
    ({"black-list": {"to-add": ["MatMulV2"]}, "white-list": {"to-remove": ["MatMulV2"]}}, "black"),  # case 2
    ({"white-list": {"to-remove": ["MatMulV2"]}}, "gray"),                                         # case 3
])
def test_modify_mixlist_docs_worked_cases_for_a_white_list_op(mixlist, kind):
    """atlasatcparam_16_0071, "假设算子A默认在白名单中": adding A to the black list moves it there (1), as does
    adding it to the black list and removing it from the white list (2); only removing it from the white
    list leaves it on the gray list (3). A = MatMul, white by default in the emulator (assumed: matrix ops)."""
    assert emu_precision.Lists().kind("MatMul") == "white"
    assert emu_precision.Lists.from_mixlist(mixlist).kind("MatMul") == kind


# --log ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("level, ok", [("debug", True), ("info", True), ("warning", True), ("error", True),
                                        ("null", True), ("verbose", False)])
def test_log_takes_the_documented_levels(tmp_path, level, ok):
    """atlasatcparam_16_0082: debug, info, warning, error, null (default); example --log=debug."""
    code, err = run_atc(*base(one_input(tmp_path, [1, 8]), tmp_path / "m"), f"--log={level}")
    assert (code == 0) == ok, err


# the command onnx2om.py emits --------------------------------------------------------------------

def test_onnx2om_command_uses_only_flags_tested_here(tmp_path, tiny_model_dir, tiny_onnx_of):
    """The audit's scope: every flag of onnx2om.py's atc command is one the tests above check."""
    r = subprocess.run([sys.executable, str(harness.ROOT / "export/onnx2om.py"), "--onnx_model_path",
                        str(tiny_onnx_of(tiny_model_dir, 64)), "--om_model_path", str(tmp_path / "m"),
                        "--soc_version", "Ascend310B1", "--dry_run"], capture_output=True, text=True, cwd=harness.ROOT)
    assert r.returncode == 0, r.stderr
    flags = {part.split("=", 1)[0] for part in shlex.split(r.stdout.splitlines()[0])[1:]}
    assert flags == {"--framework", "--model", "--output", "--soc_version", "--input_format", "--input_shape",
                     "--dynamic_dims", "--precision_mode_v2", "--modify_mixlist", "--log"}
