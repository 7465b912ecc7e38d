"""Build tiny random Qwen2/Qwen3 HuggingFace model directories for tests.

`make_tiny_model` writes everything a real Qwen chat model directory has (config.json, float32
safetensors, a byte-level BPE tokenizer with ChatML special tokens and chat template,
generation_config.json) in a few hundred KB, so tests can run the whole pipeline without the
real model. Weights come from a fixed seed; biases and norm weights are randomised as well,
because all-zero biases and all-one norms would hide mistakes that drop or misplace them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
# Plain added tokens (not special), as in Qwen2.5, so tool-call markup survives skip_special_tokens.
TOOL_TOKENS = ["<tool_call>", "</tool_call>"]
BPE_VOCAB_SIZE = 420
VOCAB_MULTIPLE = 64

# Training text for the tokenizer: enough English, Chinese and code that common words merge,
# while rarer characters (e.g. 龘) stay split into byte tokens, which streaming tests rely on.
TRAINING_TEXT = """
The assistant reads the question, thinks about it, and writes a short answer.
Please write a python function that adds two numbers and returns the result.
def add(a, b):
    return a + b
for i in range(10):
    print(i, add(i, i))
The weather today is sunny and warm; tomorrow it will rain in the morning.
A small model can still answer simple questions when the prompt is clear.
Tools let the model call functions: get_weather(city) returns the temperature.
{"name": "get_weather", "arguments": {"city": "Beijing", "unit": "celsius"}}
你好，我是一个人工智能助手。请问有什么可以帮你的吗？
今天天气很好，我们去公园散步吧。明天可能会下雨，记得带伞。
这个函数把两个数字相加，然后返回结果。
北京是中国的首都，上海是一个很大的城市。
我喜欢学习编程，也喜欢读书和写作。
"""

# ChatML with Qwen2.5-style tool use. Tool results are grouped into one user turn, each wrapped
# in <tool_response> tags; assistant tool calls are rendered as <tool_call> JSON blocks.
CHAT_TEMPLATE = """\
{%- set default_system = 'You are a helpful assistant.' -%}
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- set system_text = messages[0]['content'] -%}
    {%- set rest = messages[1:] -%}
{%- else -%}
    {%- set system_text = default_system -%}
    {%- set rest = messages -%}
{%- endif -%}
{{- '<|im_start|>system\\n' + system_text -}}
{%- if tools -%}
    {{- '\\n\\n# Tools\\n\\nYou can call the functions described inside <tools></tools>:\\n<tools>' -}}
    {%- for tool in tools -%}
        {{- '\\n' + (tool | tojson) -}}
    {%- endfor -%}
    {{- '\\n</tools>\\n\\nTo call a function, reply with its name and arguments as JSON inside <tool_call></tool_call> tags:\\n<tool_call>\\n{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>' -}}
{%- endif -%}
{{- '<|im_end|>\\n' -}}
{%- for message in rest -%}
    {%- set role = message['role'] -%}
    {%- if role == 'tool' -%}
        {%- if loop.first or rest[loop.index0 - 1]['role'] != 'tool' -%}
            {{- '<|im_start|>user' -}}
        {%- endif -%}
        {{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' -}}
        {%- if loop.last or rest[loop.index0 + 1]['role'] != 'tool' -%}
            {{- '<|im_end|>\\n' -}}
        {%- endif -%}
    {%- else -%}
        {{- '<|im_start|>' + role + '\\n' + (message['content'] or '') -}}
        {%- if role == 'assistant' and message['tool_calls'] -%}
            {%- for call in message['tool_calls'] -%}
                {%- set fn = call['function'] if call['function'] is defined else call -%}
                {%- if (message['content'] or '') or not loop.first -%}
                    {{- '\\n' -}}
                {%- endif -%}
                {%- set args = fn['arguments'] if fn['arguments'] is string else (fn['arguments'] | tojson) -%}
                {{- '<tool_call>\\n{"name": "' + fn['name'] + '", "arguments": ' + args + '}\\n</tool_call>' -}}
            {%- endfor -%}
        {%- endif -%}
        {{- '<|im_end|>\\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""


# Qwen3's thinking, as its model card and template describe it: the model opens its answer with
# <think>...</think> by itself; enable_thinking=false makes the generation prompt close an empty block, so
# that it answers at once; an assistant turn before the last user message is rendered without its thinking
# (what follows its last </think>), a later one (a tool-calling turn of the current question) keeps it,
# taken from its reasoning_content or from the <think> in its content.
THINKING_TEMPLATE = CHAT_TEMPLATE.replace("""\
{%- for message in rest -%}
    {%- set role = message['role'] -%}""", """\
{%- set ns = namespace(last_user=-1) -%}
{%- for message in rest -%}
    {%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{%- for message in rest -%}
    {%- set role = message['role'] -%}
    {%- set said = message['reasoning_content'] is string -%}
    {%- if role == 'assistant' and (said or '</think>' in (message['content'] or '')) -%}
        {%- set parts = (message['content'] or '').split('</think>') -%}
        {%- set thought = (message['reasoning_content'] if said else parts[0].split('<think>')[-1]).strip('\\n') -%}
        {%- set answer = parts[-1].lstrip('\\n') -%}
        {%- if loop.index0 > ns.last_user and thought -%}
            {%- set answer = '<think>\\n' + thought + '\\n</think>\\n\\n' + answer -%}
        {%- endif -%}
        {%- set message = {'role': role, 'content': answer, 'tool_calls': message['tool_calls']} -%}
    {%- endif -%}""").replace("""\
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}""", """\
    {{- '<|im_start|>assistant\\n' -}}
    {%- if enable_thinking is defined and enable_thinking is false -%}
        {{- '<think>\\n\\n</think>\\n\\n' -}}
    {%- endif -%}
{%- endif -%}""")
THINK_TOKENS = ["<think>", "</think>"]  # plain added tokens, as in Qwen3


def build_tokenizer(thinking: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on TRAINING_TEXT, with ChatML special tokens after the BPE vocab; thinking:
    Qwen3's <think> tokens and THINKING_TEMPLATE."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TRAINING_TEXT.strip().splitlines(), trainer=trainer)
    # Added here, in Qwen's order, so their ids follow the BPE vocabulary like in the real model.
    backend.add_special_tokens(SPECIAL_TOKENS)
    backend.add_tokens(TOOL_TOKENS + (THINK_TOKENS if thinking else []))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = THINKING_TEMPLATE if thinking else CHAT_TEMPLATE
    return tokenizer


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def build_config(model_type: str, vocab_size: int, tokenizer: PreTrainedTokenizerFast, **shape):
    from transformers import Qwen2Config, Qwen3Config

    head_dim = shape.pop("head_dim")
    common = dict(
        vocab_size=vocab_size,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": float(shape.pop("rope_theta"))},
        use_sliding_window=False,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        **shape,
    )
    if model_type == "qwen2":
        config = Qwen2Config(**common)
        if head_dim is not None:
            # Qwen2 attention honours an explicit head_dim attribute when present.
            config.head_dim = head_dim
        return config
    if model_type == "qwen3":
        default_dim = common["hidden_size"] // common["num_attention_heads"]
        return Qwen3Config(head_dim=head_dim or default_dim, attention_bias=False, **common)
    raise ValueError(f"model_type must be 'qwen2' or 'qwen3', not {model_type!r}")


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Give biases and norm weights values far from their zero/one defaults."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
            elif "norm" in name:
                param.copy_(1.0 + (torch.rand(param.shape, generator=generator) - 0.5))


def rewrite_config_v4(path: Path) -> None:
    """Turn a transformers-5 config.json into the transformers-4.x layout of the same model."""
    data = json.loads(path.read_text())
    rope = data.pop("rope_parameters", None) or {}
    data["rope_theta"] = rope.get("rope_theta", 10000.0)
    data["rope_scaling"] = None
    data["torch_dtype"] = data.pop("dtype", "float32")
    data["transformers_version"] = "4.51.3"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def make_tiny_model(
    out_dir: str | Path,
    *,
    num_layers: int = 2,
    hidden_size: int = 64,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    head_dim: int | None = None,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = False,
    model_type: str = "qwen2",
    rope_theta: float = 1e6,
    seed: int = 0,
    config_style: str = "v5",
    thinking: bool = False,
) -> Path:
    """Write a tiny random Qwen2/Qwen3 chat model directory to `out_dir` and return its path. thinking: a
    Qwen3-style tokenizer and template (<think> tokens, the enable_thinking switch)."""
    from transformers import Qwen2ForCausalLM, Qwen3ForCausalLM

    if config_style not in ("v4", "v5"):
        raise ValueError(f"config_style must be 'v4' or 'v5', not {config_style!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(thinking)
    config = build_config(
        model_type,
        round_up(len(tokenizer), VOCAB_MULTIPLE),
        tokenizer,
        num_hidden_layers=num_layers,
        hidden_size=hidden_size,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        tie_word_embeddings=tie_word_embeddings,
        rope_theta=rope_theta,
    )
    model_class = Qwen2ForCausalLM if model_type == "qwen2" else Qwen3ForCausalLM
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    randomise(model, seed)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(ENDOFTEXT)],
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    if config_style == "v4":
        rewrite_config_v4(out / "config.json")
    return out
