// `kotoba score`: the rewards a reward model gives prompt/response pairs — one pair from flags, a
// JSONL of {prompt, response}, or preference data (each pair's chosen and rejected replies, and
// the share ranked right).
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "core/atomic_file.h"
#include "core/parallel.h"
#include "data/preference_data.h"
#include "io/json_util.h"
#include "nn/reward_model.h"
#include "train/reward_model_reward.h"

using namespace kotoba;
using kotoba::cli::Flags;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

int usage() {
  std::cout << "kotoba score --model RM_DIR (--data FILE | --prompt P --response R) [--out FILE] [--format F]\n"
               "             [--chat-template T] [--max-length N] [--batch N] [--threads N] [--device cpu|cuda]\n"
               "  Scores replies with a reward model (`kotoba reward`'s OUT/model, or a transformers\n"
               "  ...ForSequenceClassification directory with one label). FILE is JSONL of {prompt, response}\n"
               "  (each line is written back with a \"score\" field) or preference data (pairs, choice or ranked:\n"
               "  each pair gets chosen_score, rejected_score and correct, and the accuracy is reported).\n"
               "  prompt is a string or a conversation [{role, content}, ...]. Output is JSONL, to stdout or\n"
               "  --out FILE (written whole, or not at all).\n"
               "  --format       preference-data shape: auto, pairs, choice, ranked (default auto)\n"
               "  --chat-template chatml, llama2, alpaca, plain; auto: the model's (default auto)\n"
               "  --max-length   tokens per sequence; longer ones are cut (default 1024)\n"
               "  --batch        sequences per forward pass (default 16)\n"
               "  --device       where the reward model runs: cpu or cuda (default cpu)\n";
  return 0;
}

struct Item {
  data::PreferencePair pair;  // prompt; chosen = the response (prompt/response mode)
  json record;                // the input record, written back with its score
};

// JSONL of {prompt, response}: errors name file:line and the field.
std::vector<Item> read_prompt_responses(const std::string& path) {
  std::ifstream in(path);
  KOTOBA_CHECK(in, path, ": cannot open");
  std::vector<Item> items;
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    json record;
    try {
      record = json::parse(line);
    } catch (const json::parse_error& e) {
      throw Error(detail::concat(where, ": malformed JSON (", e.what(), ")"));
    }
    KOTOBA_CHECK(record.is_object(), where, ": expected a JSON object with 'prompt' and 'response'");
    Item item;
    auto prompt = record.find("prompt");
    KOTOBA_CHECK(prompt != record.end(), where, ": field 'prompt' is missing");
    if (prompt->is_string()) {
      item.pair.prompt.push_back({"user", prompt->get<std::string>(), ""});
    } else {
      KOTOBA_CHECK(prompt->is_array() && !prompt->empty(), where, ": field 'prompt' is ",
                   json_util::type_name(*prompt), " (expected a string or an array of {\"role\", \"content\"} objects)");
      for (size_t i = 0; i < prompt->size(); ++i) {
        const json& m = (*prompt)[i];
        KOTOBA_CHECK(m.is_object() && m.contains("role") && m["role"].is_string() && m.contains("content") &&
                         m["content"].is_string(),
                     where, ": prompt[", i, "] must be an object with string 'role' and 'content'");
        item.pair.prompt.push_back({m["role"].get<std::string>(), m["content"].get<std::string>(), ""});
      }
      KOTOBA_CHECK(item.pair.prompt.back().role == "user", where, ": prompt[", prompt->size() - 1, "] has role '",
                   item.pair.prompt.back().role, "' (expected the prompt to end with a user turn)");
    }
    auto response = record.find("response");
    KOTOBA_CHECK(response != record.end(), where,
                 ": field 'response' is missing (a scoring file holds {prompt, response}; preference data holds "
                 "chosen/rejected, response_1/response_2 or responses)");
    KOTOBA_CHECK(response->is_string(), where, ": field 'response' is ", json_util::type_name(*response),
                 " (expected a string)");
    item.pair.chosen = response->get<std::string>();
    item.pair.where = where;
    item.record = std::move(record);
    items.push_back(std::move(item));
  }
  KOTOBA_CHECK(!items.empty(), path, ": no records (expected JSONL of {prompt, response})");
  return items;
}

// True when the file's first record has a 'response' key (prompt/response scoring), false for
// preference data.
bool is_prompt_response_file(const std::string& path) {
  std::ifstream in(path);
  KOTOBA_CHECK(in, path, ": cannot open");
  std::string line;
  while (std::getline(in, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      json first = json::parse(line);
      return first.is_object() && first.contains("response");
    } catch (const json::parse_error&) {
      return false;  // the preference reader reports it (or reads a JSON array)
    }
  }
  return false;
}

int cmd_score(const cli::Args& args) {
  if (cli::wants_help(args)) return usage();
  Flags flags = Flags::parse(args, "score",
                             {"model", "data", "prompt", "response", "out", "format", "chat-template", "max-length",
                              "batch", "threads", "device"});
  KOTOBA_CHECK(flags.has("model"), "score: --model RM_DIR (a reward model directory) is required");
  const bool single = flags.has("prompt") || flags.has("response");
  KOTOBA_CHECK(single != flags.has("data"), "score: give --data FILE, or --prompt P with --response R");
  KOTOBA_CHECK(!single || (flags.has("prompt") && flags.has("response")),
               "score: --prompt and --response go together");
  const int64_t max_length = flags.integer("max-length", 1024), batch = flags.integer("batch", 16);
  KOTOBA_CHECK(max_length > 0, "score: --max-length must be positive, got ", max_length);
  KOTOBA_CHECK(batch > 0, "score: --batch must be positive, got ", batch);
  set_num_threads(int(flags.integer("threads", 0)));
  const Device device = cli::device_flag(flags, "score");

  // Inputs first: a bad file fails before the model is read.
  std::vector<Item> items;
  bool preference = false;
  if (single) {
    Item item;
    item.pair.prompt.push_back({"user", flags.str("prompt"), ""});
    item.pair.chosen = flags.str("response");
    item.pair.where = "--prompt/--response";
    item.record = json{{"prompt", flags.str("prompt")}, {"response", flags.str("response")}};
    items.push_back(std::move(item));
  } else {
    const std::string path = flags.str("data");
    KOTOBA_CHECK(fs::is_regular_file(path), "score: --data '", path, "' does not exist");
    if (is_prompt_response_file(path)) {
      items = read_prompt_responses(path);
    } else {
      preference = true;
      for (auto& p : data::read_preference_dataset(path, flags.str("format", "auto"))) {
        KOTOBA_CHECK(!p.chosen.empty() || !p.rejected.empty(), p.where,
                     ": a record of prompts only has no reply to score (expected {prompt, response} or preference "
                     "pairs)");
        Item item;
        item.pair = std::move(p);
        items.push_back(std::move(item));
      }
    }
  }

  train::RewardModelScorer scorer(flags.str("model"), flags.str("chat-template", "auto"), max_length, batch);
  cli::move_model(scorer.model(), device, "score");
  // Every sequence to score: the response (or chosen, then rejected) after its prompt.
  std::vector<std::vector<int32_t>> sequences;
  for (const Item& item : items) {
    sequences.push_back(scorer.tokenize(item.pair.prompt, item.pair.chosen, item.pair.where));
    if (preference) sequences.push_back(scorer.tokenize(item.pair.prompt, item.pair.rejected, item.pair.where));
  }
  const std::vector<float> scores = scorer.score_tokens(sequences);

  std::string output;
  int64_t correct = 0;
  for (size_t i = 0; i < items.size(); ++i) {
    json line;
    if (preference) {
      const float c = scores[2 * i], r = scores[2 * i + 1];
      const auto& p = items[i].pair;
      json prompt = json::array();
      for (const auto& m : p.prompt) prompt.push_back({{"role", m.role}, {"content", m.content}});
      line = json{{"prompt", p.prompt.size() == 1 && p.prompt[0].role == "user" ? json(p.prompt[0].content) : prompt},
                  {"chosen", p.chosen},
                  {"rejected", p.rejected},
                  {"chosen_score", c},
                  {"rejected_score", r},
                  {"correct", c > r}};
      correct += c > r;
    } else {
      line = items[i].record;
      line["score"] = scores[i];
    }
    output += line.dump() + "\n";
  }
  if (flags.has("out")) {
    write_file_atomically(flags.str("out"), output);
  } else {
    std::cout << output;
  }
  if (preference)
    std::fprintf(stderr, "accuracy: %.2f%% (%lld of %zu pairs ranked right)\n",
                 100.0 * double(correct) / double(items.size()), (long long)correct, items.size());
  if (scorer.truncated() > 0)
    std::fprintf(stderr, "warning: %lld sequences were cut at --max-length %lld\n", (long long)scorer.truncated(),
                 (long long)scorer.max_length());
  return 0;
}

}  // namespace

KOTOBA_COMMAND("score", "score prompt/response pairs (or preference pairs) with a reward model", cmd_score);
