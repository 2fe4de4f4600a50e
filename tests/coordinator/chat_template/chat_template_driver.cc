// Test driver for jinja2 compatibility tests: reads JSON lines {"template": ..., "context": {...}} on stdin
// and prints {"prompt": ...} or {"error": ..., "stage": "parse" | "render"} per line on stdout, in order.
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "coordinator/chat_template/chat_template.h"

int main() {
  using Json = nlohmann::ordered_json;
  std::map<std::string, tessera::ChatTemplate> cache;
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    const Json request = Json::parse(line, nullptr, /*allow_exceptions=*/false);
    Json result = Json::object();
    if (!request.is_object() || !request.contains("template") || !request["template"].is_string()) {
      result["error"] = "driver: malformed request line";
      result["stage"] = "driver";
    } else {
      const std::string source = request["template"].get<std::string>();
      auto it = cache.find(source);
      if (it == cache.end()) {
        auto parsed = tessera::ChatTemplate::Parse(source);
        if (parsed.ok()) it = cache.emplace(source, *std::move(parsed)).first;
        if (!parsed.ok()) {
          result["error"] = std::string(parsed.status().message());
          result["stage"] = "parse";
        }
      }
      if (it != cache.end()) {
        const Json context = request.contains("context") ? request["context"] : Json::object();
        auto prompt = it->second.Render(context);
        if (prompt.ok()) {
          result["prompt"] = *prompt;
        } else {
          result["error"] = std::string(prompt.status().message());
          result["stage"] = "render";
        }
      }
    }
    std::cout << result.dump(-1, ' ', false, Json::error_handler_t::replace) << "\n" << std::flush;
  }
  return 0;
}
