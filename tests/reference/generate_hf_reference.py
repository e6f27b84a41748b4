"""Decoding references from transformers' own generate(): random-initialised GPT2LMHeadModel and
LlamaForCausalLM (GQA) saved with save_pretrained (+ a byte-level BPE tokenizer.json), and for each
many settings of greedy decoding and beam search (num_beams, length_penalty, early_stopping,
num_return_sequences, no_repeat_ngram_size, repetition_penalty, EOS ids that end some beams
early) on random prompts; plus transformers' logits processors and warpers applied to random
score rows. Writes <out>/generate_hf/ for tests/test_generate_hf.cpp:
  <model>/            the model directories
  cases.json          per case: model, prompt, options, the generated ids of every returned
                      sequence (prompt excluded) and beam search's sequence scores
  processors.json + processors.safetensors   per row: processor, parameters, input ids, the
                      scores in, transformers' processed scores and their float64 softmax.

kotoba's logits differ from torch's in the last float32 bits, so a case whose decisions hang on
a closer margin than MARGIN (a greedy top-two gap, a beam-selection boundary, a hypothesis
comparison) is drawn again with a new prompt: token-for-token equality is then a fair demand."""
import json
import os
import random
import sys

import torch

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers.generation import logits_process as lp  # noqa: E402
from transformers.generation.beam_search import BeamHypotheses, BeamSearchScorer  # noqa: E402

from hf_models_reference import randomise, train_tokenizer  # noqa: E402

# generate() asks whether the model is FSDP-managed by importing torch.distributed.fsdp, which
# Debian's torch 1.13 cannot import under Python 3.11; a single-process model never is.
transformers.generation.utils.is_fsdp_managed_module = lambda module: False

MARGIN = 1e-3  # in logits / summed log-probability units; kotoba's logits agree to ~1e-5
MARGINS = []  # the closest decision margins of the generate() call in progress
# What the generate() call in progress exercised: EOS candidates ranked below num_beams (ignored
# by beam search), EOS hypotheses kept, a prompt whose beam search ended before its length limit.
COVERAGE = {"eos_below_beams": 0, "eos_hypotheses": 0, "done_early": 0}


class GreedyMargin(transformers.LogitsProcessor):
    """Appended after transformers' processors: records the top-two gap of the final scores."""

    def __call__(self, input_ids, scores):
        top2 = scores.topk(2, dim=-1).values
        MARGINS.append((top2[:, 0] - top2[:, 1]).min().item())
        return scores


def watch_beam_search():
    """Wraps BeamSearchScorer.process and BeamHypotheses.add/is_done to record how close each beam
    decision was: the score gap where the num_beams non-EOS continuations are cut off, the gap at
    rank num_beams (an EOS above it ends a hypothesis, below it is ignored), and each comparison of
    a hypothesis score with the worst kept one."""
    process, add, is_done, finalize = (BeamSearchScorer.process, BeamHypotheses.add, BeamHypotheses.is_done,
                                       BeamSearchScorer.finalize)

    def watched_process(self, input_ids, next_scores, next_tokens, next_indices, pad_token_id=None,
                        eos_token_id=None, **kw):
        eos = set(eos_token_id.tolist()) if eos_token_id is not None else set()
        K = self.group_size
        for scores, tokens in zip(next_scores.tolist(), next_tokens.tolist()):
            MARGINS.append(scores[K - 1] - scores[K])
            reached = K  # ranks process() looks at: until num_beams continuations that are not EOS
            for rank, token in enumerate(tokens):
                if token not in eos and sum(1 for t in tokens[:rank + 1] if t not in eos) == K:
                    reached = rank + 1
                    break
            COVERAGE["eos_below_beams"] += sum(1 for t in tokens[K:reached] if t in eos)
            COVERAGE["eos_hypotheses"] += sum(1 for t in tokens[:K] if t in eos)
            taken = 0
            for rank, token in enumerate(tokens):
                if token in eos:
                    continue
                taken += 1
                if taken == K:
                    later = [s for s, t in zip(scores[rank + 1:], tokens[rank + 1:]) if t not in eos]
                    if later:
                        MARGINS.append(scores[rank] - later[0])
                    break
        return process(self, input_ids, next_scores, next_tokens, next_indices, pad_token_id=pad_token_id,
                       eos_token_id=eos_token_id, **kw)

    # Hypothesis scores are sums of log-probabilities over length ** length_penalty, and so are
    # their rounding differences: a gap between two of them is measured in sum units, scaled by
    # the smaller of their two length factors.
    def factor(hyps, length):
        return length ** hyps.length_penalty

    def lengths(hyps):
        if not hasattr(hyps, "kotoba_lengths"):
            hyps.kotoba_lengths = {}
        return hyps.kotoba_lengths

    def worst(hyps):
        for s, h, _ in hyps.beams:
            if s == hyps.worst_score:
                return factor(hyps, lengths(hyps)[id(h)])
        return 1.0

    def watched_add(self, hyp, sum_logprobs, beam_indices=None, generated_len=None):
        score = sum_logprobs / factor(self, generated_len)
        if len(self) >= self.num_beams:
            MARGINS.append(abs(score - self.worst_score) * min(factor(self, generated_len), worst(self)))
        lengths(self)[id(hyp)] = generated_len
        return add(self, hyp, sum_logprobs, beam_indices=beam_indices, generated_len=generated_len)

    def watched_is_done(self, best_sum_logprobs, cur_len, decoder_prompt_len=0):
        if len(self) >= self.num_beams and self.early_stopping is not True:
            length = cur_len - decoder_prompt_len
            if self.early_stopping == "never" and self.length_penalty > 0:
                length = self.max_length - decoder_prompt_len
            best = best_sum_logprobs / factor(self, length)
            MARGINS.append(abs(self.worst_score - best) * min(factor(self, length), worst(self)))
        done = is_done(self, best_sum_logprobs, cur_len, decoder_prompt_len)
        if done and cur_len < self.max_length:
            COVERAGE["done_early"] += 1
        return done

    def watched_finalize(self, input_ids, final_beam_scores, *args, **kw):
        out = finalize(self, input_ids, final_beam_scores, *args, **kw)
        for hyps in self._beam_hyps:  # the returned order and the cut below them
            ranked = sorted(((s, factor(hyps, lengths(hyps)[id(h)])) for s, h, _ in hyps.beams), reverse=True)
            MARGINS.extend((a - b) * min(fa, fb) for (a, fa), (b, fb) in zip(ranked, ranked[1:]))
        return out

    BeamSearchScorer.process = watched_process
    BeamHypotheses.add = watched_add
    BeamHypotheses.is_done = watched_is_done
    BeamSearchScorer.finalize = watched_finalize


MODELS = {
    "gpt2": ("GPT2", dict(vocab_size=300, n_positions=96, n_embd=48, n_layer=2, n_head=4, resid_pdrop=0.0,
                          embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None)),
    "llama_gqa": ("Llama", dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=128,
                                rope_theta=10000.0, rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=None)),
}

# Settings per case; "eos" picks how many EOS ids (taken from an unconstrained run's output, so
# that some beams meet them).
SETTINGS = [
    dict(max_new_tokens=12),
    dict(max_new_tokens=14, repetition_penalty=1.3, no_repeat_ngram_size=2),
    dict(max_new_tokens=12, eos=1),
    dict(max_length_extra=11, no_repeat_ngram_size=1, eos=1),
    dict(max_new_tokens=12, num_beams=3, eos=1),
    dict(max_new_tokens=12, num_beams=4, length_penalty=0.6, early_stopping=True, num_return_sequences=2,
         no_repeat_ngram_size=3, eos=1),
    dict(max_new_tokens=10, num_beams=4, length_penalty=1.5, early_stopping="never", num_return_sequences=4,
         repetition_penalty=1.2, eos=2),
    dict(max_length_extra=10, num_beams=2, length_penalty=-0.5, early_stopping=False, eos=1),
    dict(max_new_tokens=9, num_beams=5, length_penalty=2.0, early_stopping="never", num_return_sequences=3,
         repetition_penalty=1.5, no_repeat_ngram_size=2),
    dict(max_new_tokens=12, num_beams=3, length_penalty=0.0, num_return_sequences=3, eos=1),
]


def build(kind, kwargs, g):
    config = getattr(transformers, kind + "Config")(**kwargs)
    config._attn_implementation = "eager"
    model = getattr(transformers, kind + "LMHeadModel" if kind == "GPT2" else kind + "ForCausalLM")(config)
    randomise(model, g)
    model.generation_config.bos_token_id = None
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = None
    return model.eval()


def run_generate(model, prompt, setting, eos):
    kwargs = {k: v for k, v in setting.items() if k not in ("eos", "max_length_extra")}
    if "max_length_extra" in setting:
        kwargs["max_length"] = len(prompt) + setting["max_length_extra"]
    beams = kwargs.get("num_beams", 1)
    MARGINS.clear()
    for key in COVERAGE:
        COVERAGE[key] = 0
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, eos_token_id=eos or None, pad_token_id=0,
                             return_dict_in_generate=True, output_scores=True,
                             logits_processor=transformers.LogitsProcessorList([] if beams > 1 else [GreedyMargin()]),
                             **kwargs)
    P = len(prompt)
    sequences, scores = [], []
    if beams > 1:
        for row, indices in zip(out.sequences.tolist(), out.beam_indices.tolist()):
            n = sum(1 for i in indices if i >= 0)  # one beam index per generated token
            sequences.append(row[P:P + n])
        scores = out.sequences_scores.tolist()
    else:
        sequences.append(out.sequences[0, P:].tolist())
    return sequences, scores, min(MARGINS) if MARGINS else float("inf"), dict(COVERAGE)


def make_cases(models, rng):
    cases = []
    for name, model in models.items():
        V = model.config.vocab_size
        for setting in SETTINGS:
            fallback = None
            for attempt in range(40):
                prompt = [rng.randrange(V) for _ in range(rng.randint(2, 8))]
                eos = []
                if setting.get("eos"):
                    # EOS ids the unconstrained decoding meets early on.
                    free, _, _, _ = run_generate(model, prompt, {k: v for k, v in setting.items() if k != "eos"}, [])
                    candidates = [t for t in free[-1][2:] if t not in prompt]
                    if len(set(candidates)) < setting["eos"]:
                        continue
                    eos = list(dict.fromkeys(candidates))[:setting["eos"]]
                    eos = [eos[0]] + sorted(set(eos[1:]))
                result = (prompt, eos, *run_generate(model, prompt, setting, eos), attempt)
                if result[4] < MARGIN:
                    continue
                # Beam search with EOS ids: prefer prompts where some EOS ends a hypothesis and (but
                # with early_stopping True) the search ends before its limit, so that those rules
                # are checked. (An EOS ranked below num_beams yet reached is rarer; counted only.)
                coverage = result[5]
                wanted = not (eos and setting.get("num_beams", 1) > 1) or (
                    coverage["eos_hypotheses"] and (coverage["done_early"] or setting.get("early_stopping") is True))
                if wanted:
                    break
                fallback = fallback or result
            else:
                if fallback is None:
                    raise SystemExit(f"generate_hf_reference: no prompt with clear margins for {name} {setting}")
                result = fallback
            prompt, eos, sequences, scores, margin, coverage, attempt = result
            options = {k: v for k, v in setting.items() if k not in ("eos", "max_length_extra")}
            if "max_length_extra" in setting:
                options["max_length"] = len(prompt) + setting["max_length_extra"]
            if "early_stopping" in options:
                options["early_stopping"] = str(options["early_stopping"]).lower()
            cases.append({"model": name, "prompt": prompt, "options": options, "eos_token_ids": eos,
                          "sequences": sequences, "scores": scores, "attempts": attempt + 1,
                          "margin": margin, "coverage": coverage})
    return cases


def make_processors(g, rng):
    """Rows of random scores through each transformers processor alone and through all of them in
    generate()'s order."""
    rows, tensors = [], {}

    def add(kind, params, procs, scores, ids):
        out = scores.clone()
        for p in procs:
            out = p(ids, out)
        i = len(rows)
        tensors[f"{i}.scores"] = scores.contiguous()
        tensors[f"{i}.ids"] = ids.to(torch.int32).contiguous()
        tensors[f"{i}.out"] = out.contiguous()
        tensors[f"{i}.probs"] = torch.softmax(out.double(), dim=-1).contiguous()
        rows.append({"kind": kind, "params": params})

    for trial in range(240):
        V = rng.randint(8, 160)
        scores = 3.0 * torch.randn((1, V), generator=g)
        if trial % 6 == 5:  # ties: values on a coarse grid
            scores = (scores * 2).round() / 2
        L = rng.randint(1, 24)
        few = rng.randint(2, min(V, 6))  # small alphabets make repeated n-grams
        ids = torch.randint(0, few if trial % 2 else V, (1, L), generator=g)
        kind = ["temperature", "top_k", "top_p", "min_p", "repetition_penalty", "no_repeat_ngram_size", "chain"][trial % 7]
        t = round(rng.uniform(0.3, 2.0), 3)
        k = rng.randint(1, V + 3)
        p = round(rng.uniform(0.05, 0.99), 3)
        m = round(rng.choice([rng.uniform(0.001, 0.05), rng.uniform(0.05, 0.6)]), 4)
        r = round(rng.uniform(0.5, 2.0), 3)
        n = rng.randint(1, 4)
        if kind in ("top_p", "chain") and trial % 6 == 5:
            scores = 3.0 * torch.randn((1, V), generator=g)  # torch's sort orders ties arbitrarily
        if kind == "temperature":
            add(kind, {"temperature": t}, [lp.TemperatureLogitsWarper(t)], scores, ids)
        elif kind == "top_k":
            add(kind, {"top_k": k}, [lp.TopKLogitsWarper(k)], scores, ids)
        elif kind == "top_p":
            add(kind, {"top_p": p}, [lp.TopPLogitsWarper(p)], scores, ids)
        elif kind == "min_p":
            add(kind, {"min_p": m}, [lp.MinPLogitsWarper(m)], scores, ids)
        elif kind == "repetition_penalty":
            add(kind, {"repetition_penalty": r}, [lp.RepetitionPenaltyLogitsProcessor(r)], scores, ids)
        elif kind == "no_repeat_ngram_size":
            add(kind, {"no_repeat_ngram_size": n}, [lp.NoRepeatNGramLogitsProcessor(n)], scores, ids)
        else:
            procs = [lp.RepetitionPenaltyLogitsProcessor(r), lp.NoRepeatNGramLogitsProcessor(n),
                     lp.TemperatureLogitsWarper(t), lp.TopKLogitsWarper(k), lp.TopPLogitsWarper(p),
                     lp.MinPLogitsWarper(m)]
            add(kind, {"repetition_penalty": r, "no_repeat_ngram_size": n, "temperature": t, "top_k": k,
                       "top_p": p, "min_p": m}, procs, scores, ids)
    return rows, tensors


def main():
    out_dir = os.path.join(sys.argv[1], "generate_hf")
    os.makedirs(out_dir, exist_ok=True)
    seed = int(os.environ.get("KOTOBA_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"generate_hf_reference: seed {seed} (set KOTOBA_TEST_SEED={seed} to reproduce); "
          f"transformers {transformers.__version__}")
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tok = train_tokenizer(rng, os.path.join(out_dir, "tokenizer.json"))
    models = {}
    for name, (kind, kwargs) in MODELS.items():
        model = build(kind, kwargs, g)
        d = os.path.join(out_dir, name)
        model.save_pretrained(d, safe_serialization=True)
        tok.save(os.path.join(d, "tokenizer.json"))
        models[name] = model
    watch_beam_search()
    cases = make_cases(models, rng)
    with open(os.path.join(out_dir, "cases.json"), "w") as f:
        json.dump({"seed": seed, "cases": cases}, f)
    rows, tensors = make_processors(g, rng)
    save_file(tensors, os.path.join(out_dir, "processors.safetensors"))
    with open(os.path.join(out_dir, "processors.json"), "w") as f:
        json.dump({"seed": seed, "rows": rows}, f)
    worst = min(c["margin"] for c in cases)
    covered = {k: sum(1 for c in cases if c["coverage"][k]) for k in COVERAGE}
    print(f"  {len(cases)} generate cases (closest margin {worst:.2e}; cases with {covered}), "
          f"{len(rows)} processor rows")


if __name__ == "__main__":
    main()
