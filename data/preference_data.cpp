// Reading preference data sets (pairs, choice, ranked lists, prompts) into prompt/chosen/rejected
// pairs, with errors that point at the file, line and field.
#include "data/preference_data.h"

#include "core/error.h"
#include "data/json_records.h"
#include "io/json_util.h"

namespace kotoba::data {

namespace {

using nlohmann::json;

const char kKnownShapes[] =
    "known shapes: pairs (prompt, chosen, rejected), choice (prompt, response_1, response_2, preference), "
    "ranked (prompt, responses, ranks), prompts (prompt)";

bool detect_preference_shape(const json& record, PreferenceShape& shape) {
  if (!record.is_object()) return false;
  const std::pair<const char*, PreferenceShape> marks[] = {{"chosen", PreferenceShape::pairs},
                                                           {"response_1", PreferenceShape::choice},
                                                           {"responses", PreferenceShape::ranked}};
  for (const auto& [key, s] : marks)
    if (record.contains(key)) {
      shape = s;
      return true;
    }
  if (record.contains("prompt")) {
    shape = PreferenceShape::prompts;
    return true;
  }
  return false;
}

// A string prompt is one user turn; a conversation must end with the user's turn.
std::vector<chat::Message> prompt_field(const json& record, const std::string& where) {
  auto it = record.find("prompt");
  KOTOBA_CHECK(it != record.end(), where,
               ": field 'prompt' is missing (expected a string or an array of {\"role\", \"content\"} objects)");
  if (it->is_string()) return {chat::Message{"user", it->get<std::string>(), ""}};
  KOTOBA_CHECK(it->is_array(), where, ": field 'prompt' is ", json_util::type_name(*it),
               " (expected a string or an array of {\"role\", \"content\"} objects)");
  std::vector<chat::Message> messages = message_list(*it, "prompt", where);
  KOTOBA_CHECK(!messages.empty(), where, ": field 'prompt' is empty (expected at least a user message)");
  KOTOBA_CHECK(messages.back().role == "user", where, ": prompt[", messages.size() - 1, "] has role '",
               messages.back().role, "' (expected the prompt to end with a user turn, which the reply answers)");
  return messages;
}

// A reply: a string, or [{role: assistant, content}] as TRL's conversational data holds it.
std::string reply_value(const json& value, const std::string& field, const std::string& where) {
  if (value.is_string()) return value.get<std::string>();
  const char* expected = " (expected a string or [{\"role\": \"assistant\", \"content\": ...}])";
  KOTOBA_CHECK(value.is_array(), where, ": field '", field, "' is ", json_util::type_name(value), expected);
  KOTOBA_CHECK(value.size() == 1, where, ": field '", field, "' holds ", value.size(), " messages", expected);
  const json& m = value[0];
  const std::string at = detail::concat(where, ": ", field, "[0]");
  KOTOBA_CHECK(m.is_object(), at, " is ", json_util::type_name(m), expected);
  const std::string role = string_field(m, "role", at, true);
  KOTOBA_CHECK(role == "assistant", at, ": field 'role' is '", role, "'", expected);
  return string_field(m, "content", at, true);
}

std::string reply_field(const json& record, const std::string& key, const std::string& where) {
  auto it = record.find(key);
  KOTOBA_CHECK(it != record.end(), where, ": field '", key, "' is missing (expected the reply as a string)");
  return reply_value(*it, key, where);
}

int64_t integer_value(const json& value, const std::string& field, const std::string& where, const char* expected) {
  KOTOBA_CHECK(value.is_number_integer() || (value.is_number_float() && value.get<double>() == double(int64_t(value.get<double>()))),
               where, ": field '", field, "' is ", json_util::type_name(value), " (expected ", expected, ")");
  return value.is_number_integer() ? value.get<int64_t>() : int64_t(value.get<double>());
}

void read_record(const json& record, PreferenceShape shape, const std::string& where,
                 std::vector<PreferencePair>& out) {
  KOTOBA_CHECK(record.is_object(), where, ": the record is ", json_util::type_name(record), " (expected an object)");
  PreferenceShape seen = shape;
  if (detect_preference_shape(record, seen))
    KOTOBA_CHECK(seen == shape, where, ": the record's keys (", keys_of(record), ") are those of the ",
                 preference_shape_name(seen), " shape, expected ", preference_shape_name(shape),
                 " (the shape of the first record, or --format)");
  PreferencePair pair{prompt_field(record, where), "", "", where};
  switch (shape) {
    case PreferenceShape::pairs:
      pair.chosen = reply_field(record, "chosen", where);
      pair.rejected = reply_field(record, "rejected", where);
      out.push_back(std::move(pair));
      return;
    case PreferenceShape::choice: {
      std::string first = reply_field(record, "response_1", where), second = reply_field(record, "response_2", where);
      auto it = record.find("preference");
      const char* expected = "1 or 2, the preferred response";
      KOTOBA_CHECK(it != record.end(), where, ": field 'preference' is missing (expected ", expected, ")");
      const int64_t preference = integer_value(*it, "preference", where, expected);
      KOTOBA_CHECK(preference == 1 || preference == 2, where, ": field 'preference' is ", preference, " (expected ",
                   expected, ")");
      pair.chosen = std::move(preference == 1 ? first : second);
      pair.rejected = std::move(preference == 1 ? second : first);
      out.push_back(std::move(pair));
      return;
    }
    case PreferenceShape::ranked: {
      const json& responses = record.at("responses");
      auto ranks_it = record.find("ranks");
      KOTOBA_CHECK(responses.is_array(), where, ": field 'responses' is ", json_util::type_name(responses),
                   " (expected an array of replies)");
      KOTOBA_CHECK(ranks_it != record.end(), where,
                   ": field 'ranks' is missing (expected one integer per response, 1 = best)");
      KOTOBA_CHECK(ranks_it->is_array(), where, ": field 'ranks' is ", json_util::type_name(*ranks_it),
                   " (expected an array of integers, one per response, 1 = best)");
      KOTOBA_CHECK(responses.size() >= 2, where, ": field 'responses' holds ", responses.size(),
                   " replies (expected at least 2 to rank)");
      KOTOBA_CHECK(ranks_it->size() == responses.size(), where, ": field 'ranks' holds ", ranks_it->size(),
                   " values for ", responses.size(), " responses (expected one rank per response)");
      std::vector<std::string> replies;
      std::vector<int64_t> ranks;
      for (size_t i = 0; i < responses.size(); ++i) {
        replies.push_back(reply_value(responses[i], detail::concat("responses[", i, "]"), where));
        ranks.push_back(integer_value((*ranks_it)[i], detail::concat("ranks[", i, "]"), where, "an integer rank"));
      }
      size_t made = 0;
      for (size_t i = 0; i < replies.size(); ++i)
        for (size_t j = i + 1; j < replies.size(); ++j) {
          if (ranks[i] == ranks[j]) continue;
          const bool i_better = ranks[i] < ranks[j];
          out.push_back({pair.prompt, replies[i_better ? i : j], replies[i_better ? j : i], where});
          ++made;
        }
      KOTOBA_CHECK(made > 0, where, ": every response has the same rank, so the record gives no preference");
      return;
    }
    case PreferenceShape::prompts:
      out.push_back(std::move(pair));
      return;
  }
}

}  // namespace

const char* preference_shape_name(PreferenceShape shape) {
  switch (shape) {
    case PreferenceShape::pairs: return "pairs";
    case PreferenceShape::choice: return "choice";
    case PreferenceShape::ranked: return "ranked";
    case PreferenceShape::prompts: return "prompts";
  }
  return "?";
}

PreferenceShape parse_preference_shape(std::string_view name) {
  for (PreferenceShape s : {PreferenceShape::pairs, PreferenceShape::choice, PreferenceShape::ranked,
                            PreferenceShape::prompts})
    if (name == preference_shape_name(s)) return s;
  throw Error(detail::concat("unknown preference data format '", name,
                             "': expected auto, pairs, choice, ranked or prompts"));
}

std::vector<PreferencePair> read_preference_dataset(const std::string& path, const std::string& format) {
  PreferenceShape shape = PreferenceShape::pairs;
  if (format != "auto") shape = parse_preference_shape(format);  // an unknown name fails before the file is read
  const std::vector<RawRecord> records = read_json_records(path, read_data_file(path));
  KOTOBA_CHECK(!records.empty(), path, ": holds no record");
  if (format == "auto") {
    const RawRecord& first = records.front();
    KOTOBA_CHECK(first.value.is_object(), first.where, ": the record is ", json_util::type_name(first.value),
                 " (expected an object)");
    KOTOBA_CHECK(detect_preference_shape(first.value, shape), first.where,
                 ": cannot tell the preference data's shape from the first record's keys (", keys_of(first.value),
                 "); ", kKnownShapes, ". Name the shape with --format");
  }
  std::vector<PreferencePair> pairs;
  pairs.reserve(records.size());
  for (const RawRecord& r : records) read_record(r.value, shape, r.where, pairs);
  return pairs;
}

SftExample preference_example(const PreferencePair& pair, const std::string& reply) {
  SftExample example{pair.prompt, false};
  example.messages.push_back(chat::Message{"assistant", reply, ""});
  return example;
}

}  // namespace kotoba::data
