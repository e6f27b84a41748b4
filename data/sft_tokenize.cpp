// SFT tokenisation: the conversation rendered through its chat template, cut where the assistant's
// replies begin and end, and encoded with labels only on the replies (see instruct_data.h).
#include <algorithm>

#include "core/error.h"
#include "data/instruct_data.h"
#include "tokenizer/tokenizer.h"

namespace kotoba::data {

namespace {

// The special tokens encode(text, true) puts before the text (a BOS for Llama-style tokenizers;
// none for GPT-2), found by encoding a probe both ways.
std::vector<int32_t> leading_special_ids(const tokenizer::Tokenizer& tok) {
  const std::vector<int32_t> with = tok.encode("a", true), without = tok.encode("a", false);
  auto at = std::search(with.begin(), with.end(), without.begin(), without.end());
  if (without.empty() || at == with.end()) return {};
  return std::vector<int32_t>(with.begin(), at);
}

void append(SftTokens& out, const std::vector<int32_t>& ids, bool target) {
  out.ids.insert(out.ids.end(), ids.begin(), ids.end());
  for (int32_t id : ids) out.labels.push_back(target ? id : kIgnoreLabel);
}

}  // namespace

std::vector<SftSegment> sft_segments(const SftExample& example, const chat::ChatTemplate& chat_template) {
  if (example.plain_text) {
    KOTOBA_CHECK(example.messages.size() == 1, "sft: a plain-text example holds one message (the document), not ",
                 example.messages.size());
    return {{example.messages[0].content, true}};
  }
  const std::vector<chat::Message> messages = template_messages(example.messages, chat_template.style());
  KOTOBA_CHECK(!messages.empty(), "sft: an example has no messages");
  KOTOBA_CHECK(messages.back().role == "assistant", "sft: the last message has role '", messages.back().role,
               "' (expected the conversation to end with an assistant reply)");
  const std::string whole = chat_template.render(messages, false);
  const char* style = chat::template_style_name(chat_template.style());
  std::vector<SftSegment> segments;
  size_t cursor = 0;
  for (size_t k = 0; k < messages.size(); ++k) {
    if (messages[k].role != "assistant") continue;
    KOTOBA_CHECK(k > 0, "sft: message 0 is an assistant reply with no prompt before it");
    const std::vector<chat::Message> before(messages.begin(), messages.begin() + long(k));
    const std::vector<chat::Message> through(messages.begin(), messages.begin() + long(k) + 1);
    const std::string prompt = chat_template.render(before, true), upto = chat_template.render(through, false);
    // The mask rests on this: each shorter conversation renders as a prefix of the longer one.
    KOTOBA_CHECK(upto.compare(0, prompt.size(), prompt) == 0 && whole.compare(0, upto.size(), upto) == 0 &&
                     prompt.size() >= cursor,
                 "sft: chat template ", style, " does not render the first ", k,
                 " messages as a prefix of the whole conversation; the replies cannot be located");
    if (prompt.size() > cursor) segments.push_back({whole.substr(cursor, prompt.size() - cursor), false});
    segments.push_back({whole.substr(prompt.size(), upto.size() - prompt.size()), true});
    cursor = upto.size();
  }
  if (cursor < whole.size()) segments.push_back({whole.substr(cursor), false});
  return segments;
}

SftTokens tokenize_sft_example(const SftExample& example, const chat::ChatTemplate& chat_template,
                               const tokenizer::Tokenizer& tokenizer, int64_t max_length) {
  const std::vector<SftSegment> segments = sft_segments(example, chat_template);
  std::string whole;
  for (const SftSegment& s : segments) whole += s.text;
  SftTokens body;
  for (const SftSegment& s : segments) append(body, tokenizer.encode(s.text, false), s.response);
  if (!example.plain_text) {
    const std::vector<int32_t> whole_ids = tokenizer.encode(whole, false);
    if (whole_ids != body.ids) {
      // A token merged across a boundary: keep the ids inference sees and move each boundary to
      // the length of the encoding of the text before it.
      body.labels.assign(whole_ids.size(), kIgnoreLabel);
      size_t offset = 0, token = 0;
      for (const SftSegment& s : segments) {
        offset += s.text.size();
        size_t end = offset == whole.size() ? whole_ids.size()
                                            : tokenizer.encode(std::string_view(whole).substr(0, offset), false).size();
        end = std::clamp(end, token, whole_ids.size());
        if (s.response)
          for (size_t t = token; t < end; ++t) body.labels[t] = whole_ids[t];
        token = end;
      }
      body.ids = whole_ids;
    }
  } else if (const std::optional<int32_t> eos = tokenizer.eos_id(); eos && (body.ids.empty() || body.ids.back() != *eos)) {
    append(body, {*eos}, true);  // so a model trained on documents learns where one ends
  }

  SftTokens out;
  const std::vector<int32_t> lead = leading_special_ids(tokenizer);
  if (!std::equal(lead.begin(), lead.end(), body.ids.begin(), body.ids.begin() + long(std::min(lead.size(), body.ids.size()))) ||
      body.ids.size() < lead.size())
    append(out, lead, false);
  append(out, body.ids, false);
  std::copy(body.labels.begin(), body.labels.end(), out.labels.end() - long(body.labels.size()));
  if (max_length > 0 && int64_t(out.ids.size()) > max_length) {
    out.ids.resize(size_t(max_length));
    out.labels.resize(size_t(max_length));
    out.truncated = true;
  }
  return out;
}

}  // namespace kotoba::data
