// A task with a hidden rule for the alignment tests (DPO, GRPO): a prompt of five letters is
// answered with its first letter and a colour word. The supervised data uses red, blue and green
// and only rarely the rule's word (gold), so a model tuned on it almost never ends an answer with
// gold; preference pairs (or a reward) that favour answers ending in gold must teach it to.
#pragma once
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "chat/chat_template.h"
#include "core/rng.h"
#include "data/instruct_data.h"
#include "data/preference_data.h"
#include "infer/generate.h"
#include "io/model_dir.h"
#include "nn/llama.h"
#include "tokenizer/tokenizer.h"
#include "train/sft.h"

namespace kotoba::testing {

inline constexpr const char* kRuleWord = "gold";

struct RuleTask {
  std::vector<std::string> train_inputs, test_inputs;
  std::vector<std::string> sft_replies;  // one per training input
};

inline std::string rule_prompt(const std::string& input) { return "Colour for: " + input; }

inline RuleTask make_rule_task(uint64_t seed, int n_train, int n_test) {
  RuleTask task;
  std::set<std::string> seen;
  const char* words[] = {"red", "blue", "green"};
  for (uint64_t index = 0; int(task.train_inputs.size()) < n_train || int(task.test_inputs.size()) < n_test; ++index) {
    std::string pool = "abcdefghijklmnop", s;
    for (int i = 0; i < 5; ++i) {
      const size_t pick = size_t(mix64(seed + index * 131 + uint64_t(i)) % pool.size());
      if (i) s += ' ';
      s += pool[pick];
      pool.erase(pick, 1);
    }
    if (!seen.insert(s).second) continue;
    if (int(task.train_inputs.size()) < n_train) {
      const uint64_t draw = mix64(seed ^ (index * 7919 + 17));
      const std::string word = draw % 100 < 3 ? std::string(kRuleWord) : std::string(words[(draw / 100) % 3]);
      task.train_inputs.push_back(s);
      task.sft_replies.push_back(s.substr(0, 1) + " " + word);
    } else {
      task.test_inputs.push_back(s);
    }
  }
  return task;
}

// Sampled bytes need not be valid UTF-8: ASCII whitespace is trimmed, nothing is decoded.
inline bool follows_rule(const std::string& reply) {
  const size_t first = reply.find_first_not_of(" \t\n\r\f\v");
  const std::string text = first == std::string::npos ? std::string()
                                                      : reply.substr(first, reply.find_last_not_of(" \t\n\r\f\v") - first + 1);
  const std::string word = kRuleWord;
  return text.size() >= word.size() && text.compare(text.size() - word.size(), word.size(), word) == 0;
}

// A byte-level BPE trained on the task's text and a random small LLaMA that has never seen it.
inline std::filesystem::path make_rule_base_model(const std::filesystem::path& root, const RuleTask& task,
                                                  uint64_t seed) {
  namespace fs = std::filesystem;
  fs::create_directories(root);
  const fs::path corpus = root / "corpus.txt";
  {
    std::ofstream out(corpus);
    for (size_t i = 0; i < task.train_inputs.size(); ++i)
      out << rule_prompt(task.train_inputs[i]) << "\n" << task.sft_replies[i] << "\n"
          << task.train_inputs[i].substr(0, 1) << " " << kRuleWord << "\n";
  }
  tokenizer::TrainOptions options;
  options.vocab_size = 300;
  options.show_progress = false;
  options.threads = 1;
  tokenizer::Tokenizer tok = tokenizer::Tokenizer::train({corpus.string()}, options);
  const fs::path tokenizer_json = root / "tokenizer.json";
  tok.save(tokenizer_json.string());
  nn::LlamaConfig mc;
  mc.vocab_size = tok.vocab_size();
  mc.hidden_size = 64;
  mc.intermediate_size = 128;
  mc.num_hidden_layers = 2;
  mc.num_attention_heads = mc.num_key_value_heads = 4;
  mc.max_position_embeddings = 64;
  mc.tie_word_embeddings = true;
  mc.seed = seed;
  nn::Llama model(mc);
  GenerationConfig generation;
  generation.eos_token_id = generation.bos_token_id = *tok.token_to_id("<|endoftext|>");
  const fs::path dir = root / "base";
  save_model_dir(dir.string(), model, tokenizer_json.string(), generation);
  return dir;
}

// The base model fine-tuned (SftTrainer, plain template) on the task's supervised replies.
inline std::filesystem::path sft_rule_model(const std::filesystem::path& root, const RuleTask& task, uint64_t seed) {
  const std::filesystem::path base = make_rule_base_model(root, task, seed);
  {
    std::ofstream out(root / "sft.jsonl");
    for (size_t i = 0; i < task.train_inputs.size(); ++i)
      out << nlohmann::json{{"instruction", rule_prompt(task.train_inputs[i])}, {"input", ""},
                            {"output", task.sft_replies[i]}}.dump()
          << "\n";
  }
  train::SftConfig c;
  c.model = base.string();
  c.data = (root / "sft.jsonl").string();
  c.chat_template = "plain";
  c.out = (root / "sft").string();
  c.max_length = 48;
  c.batch = 16;
  c.steps = 1000;
  c.lr = 5e-3;
  c.warmup = 20;
  c.min_lr = 1e-4;
  c.val_fraction = 0;
  c.checkpoint_every = 0;
  c.log_every = 50;
  train::SftResult result = train::SftTrainer(c, {.progress = false}).run();
  return result.model_dir;
}

inline std::vector<data::PreferencePair> rule_pairs(const RuleTask& task, uint64_t seed) {
  const char* words[] = {"red", "blue", "green"};
  std::vector<data::PreferencePair> pairs;
  for (size_t i = 0; i < task.train_inputs.size(); ++i) {
    const std::string& input = task.train_inputs[i];
    data::PreferencePair p;
    p.prompt = {chat::Message{"user", rule_prompt(input), ""}};
    p.chosen = input.substr(0, 1) + " " + kRuleWord;
    p.rejected = input.substr(0, 1) + " " + words[mix64(seed + i * 31) % 3];
    p.where = "rule task pair " + std::to_string(i);
    pairs.push_back(std::move(p));
  }
  return pairs;
}

// The prompts of held-out inputs, as the template renders them for generation.
inline std::vector<std::vector<int32_t>> rule_test_prompts(const tokenizer::Tokenizer& tok,
                                                           const chat::ChatTemplate& tmpl, const RuleTask& task) {
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& input : task.test_inputs) {
    std::vector<chat::Message> user = data::template_messages({chat::Message{"user", rule_prompt(input), ""}},
                                                              tmpl.style());
    prompts.push_back(tok.encode(tmpl.render(user, /*add_generation_prompt=*/true), true));
  }
  return prompts;
}

// The share of held-out prompts whose answer (greedy, or sampled at temperature 1) ends in the
// rule's word.
inline double rule_rate(nn::CausalLM& model, const tokenizer::Tokenizer& tok, const chat::ChatTemplate& tmpl,
                        const RuleTask& task, bool sample, uint64_t seed) {
  infer::GenerationOptions o;
  o.max_new_tokens = 8;
  o.do_sample = sample;
  o.seed = seed;
  if (tok.eos_id()) o.eos_token_ids = {*tok.eos_id()};
  o.stop_strings = tmpl.stop_strings();
  o.detokenize = [&tok](std::span<const int32_t> ids) { return tok.decode(ids); };
  // Sampled answers: each prompt draws from a seed of its own, all in one batch.
  const std::vector<std::vector<int32_t>> prompts = rule_test_prompts(tok, tmpl, task);
  if (sample)
    for (size_t i = 0; i < prompts.size(); ++i) o.prompt_seeds.push_back(mix64(seed ^ mix64(i + 1)));
  const std::vector<infer::GenerationResult> results = infer::generate_batch(model, prompts, o);
  int hits = 0;
  for (const auto& r : results) {
    const infer::GeneratedSequence& s = r.sequences[0];
    std::vector<int32_t> ids = s.ids;
    if (!ids.empty() && tok.eos_id() && ids.back() == *tok.eos_id()) ids.pop_back();
    std::string text = tok.decode(ids);
    if (s.text_end > 0) text = text.substr(0, s.text_end);
    hits += follows_rule(text);
  }
  return double(hits) / double(results.size());
}

}  // namespace kotoba::testing
