// A training config as one table of fields: each field is at once a member of the config struct,
// a key of its --config JSON file, a `--flag` of its command and a line of its --help. The table is
// the only list; JSON in/out, flag parsing and the resume check are made from it.
#pragma once
#include <cmath>
#include <cstdio>
#include <span>
#include <string>
#include <type_traits>
#include <variant>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace kotoba::train {

template <typename C>
struct ConfigField {
  const char* name;
  std::variant<int64_t C::*, double C::*, std::string C::*> member;
  const char* help;
  bool affects_trajectory;  // must match the checkpoint's on resume
};

template <typename C>
nlohmann::json config_to_json(const C& config, std::span<const ConfigField<C>> fields) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& f : fields) std::visit([&](auto member) { j[f.name] = config.*member; }, f.member);
  return j;
}

// Applies the keys of `j` onto `config`: an unknown key is an Error naming `source`, the key and the
// known keys; a mistyped value names the key and the expected type.
template <typename C>
void apply_config_json(C& config, const nlohmann::json& j, const std::string& source,
                       std::span<const ConfigField<C>> fields) {
  KOTOBA_CHECK(j.is_object(), source, ": expected a JSON object of config keys");
  for (auto& [key, value] : j.items()) {
    const ConfigField<C>* field = nullptr;
    for (const auto& f : fields)
      if (key == f.name) field = &f;
    if (!field) {
      std::string known;
      for (const auto& f : fields) known += (known.empty() ? "" : ", ") + std::string(f.name);
      throw Error(detail::concat(source, ": unknown key '", key, "' (known keys: ", known, ")"));
    }
    std::visit(
        [&](auto member) {
          using T = std::remove_reference_t<decltype(config.*member)>;
          if constexpr (std::is_same_v<T, int64_t>) {
            const bool integral = value.is_number_integer() || value.is_number_unsigned() ||
                                  (value.is_number_float() && value.template get<double>() ==
                                                                  std::floor(value.template get<double>()) &&
                                   std::abs(value.template get<double>()) < 9e15);
            KOTOBA_CHECK(integral, source, ": key '", key, "' must be an integer, got ", value.dump());
            config.*member =
                value.is_number_float() ? int64_t(value.template get<double>()) : value.template get<int64_t>();
          } else if constexpr (std::is_same_v<T, double>) {
            KOTOBA_CHECK(value.is_number(), source, ": key '", key, "' must be a number, got ", value.dump());
            config.*member = value.template get<double>();
          } else {
            KOTOBA_CHECK(value.is_string(), source, ": key '", key, "' must be a string, got ", value.dump());
            config.*member = value.template get<std::string>();
          }
        },
        field->member);
  }
}

// Reads a JSON file onto `config` (errors name the file).
nlohmann::json read_config_file(const std::string& path);
template <typename C>
void apply_config_file(C& config, const std::string& path, std::span<const ConfigField<C>> fields) {
  apply_config_json(config, read_config_file(path), path, fields);
}

// Every field marked affects_trajectory must be equal in `saved` (a checkpoint's config, read from
// `checkpoint_file`) and `now`: an Error naming the field and both values otherwise.
template <typename C>
void check_resumable(const C& saved, const C& now, const std::string& checkpoint_file,
                     std::span<const ConfigField<C>> fields) {
  const nlohmann::json a = config_to_json(saved, fields), b = config_to_json(now, fields);
  for (const auto& f : fields) {
    if (!f.affects_trajectory) continue;
    KOTOBA_CHECK(a[f.name] == b[f.name], "resume: '", f.name, "' is ", b[f.name].dump(), " but the checkpoint (",
                 checkpoint_file, ") was trained with ", a[f.name].dump(), "; a resumed run must keep it");
  }
}

// Checks the fine-tuning configs share; their errors read "COMMAND config: 'KEY' ...".
void check_non_negative(const char* command, const char* key, double v);
void check_in_unit_interval(const char* command, const char* key, double v);  // [0, 1)

// lr (0: the trainer's default, unless lr_required), min_lr, warmup, weight_decay, beta1, beta2,
// eps and clip.
template <typename C>
void validate_optimizer_config(const C& c, const char* command, bool lr_required = false) {
  if (lr_required) {
    KOTOBA_CHECK(c.lr > 0, command, " config: 'lr' must be positive, got ", c.lr);
  } else {
    check_non_negative(command, "lr", c.lr);
  }
  check_non_negative(command, "min_lr", c.min_lr);
  KOTOBA_CHECK((!lr_required && c.lr == 0) || c.min_lr <= c.lr, command, " config: 'min_lr' (", c.min_lr,
               ") must not exceed 'lr' (", c.lr, ")");
  check_non_negative(command, "warmup", double(c.warmup));
  check_non_negative(command, "weight_decay", c.weight_decay);
  check_in_unit_interval(command, "beta1", c.beta1);
  check_in_unit_interval(command, "beta2", c.beta2);
  KOTOBA_CHECK(c.eps > 0, command, " config: 'eps' must be positive, got ", c.eps);
  check_non_negative(command, "clip", c.clip);
}

// lora_r and lora_alpha.
template <typename C>
void validate_lora_config(const C& c, const char* command) {
  check_non_negative(command, "lora_r", double(c.lora_r));
  KOTOBA_CHECK(c.lora_alpha > 0, command, " config: 'lora_alpha' must be positive, got ", c.lora_alpha);
}

// eval_every, checkpoint_every, seed and threads.
template <typename C>
void validate_run_config(const C& c, const char* command) {
  check_non_negative(command, "eval_every", double(c.eval_every));
  check_non_negative(command, "checkpoint_every", double(c.checkpoint_every));
  check_non_negative(command, "seed", double(c.seed));
  check_non_negative(command, "threads", double(c.threads));
}

}  // namespace kotoba::train
