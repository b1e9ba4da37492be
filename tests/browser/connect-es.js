// Bundled by the test (tests/support/connect_es.rs) with esbuild into the
// page tests/browser/connect-es.html: a real gRPC-Web client, Connect-ES,
// calling streamhub from another origin. It reports what happens through
// streamhub's own POST /messages into the `report` room:
//   "sub ready"          SubscribeMessages is open (its welcome arrived);
//   "sub <content>"      each CHAT message the subscription received;
//   "sent <id>"          SendMessage's answer;
//   "refused <code> <message>"  a SendMessage the server refused;
//   "metric <name>"      the first StreamMetrics measurement;
//   "failed <error>"     anything that went wrong.
import { createClient, ConnectError } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ChatService } from "./gen/chat_pb.js";

const params = new URLSearchParams(location.search);
const base = params.get("base");
const room = params.get("room");
const reportRoom = params.get("report");
const client = createClient(ChatService, createGrpcWebTransport({ baseUrl: base }));

const report = (content) =>
  fetch(base + "/messages", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ room: reportRoom, user: "connect-es", content }),
  });

async function subscribe() {
  let welcomed = false;
  for await (const m of client.subscribeMessages({ room, user: "" }, { timeoutMs: 60000 })) {
    if (!welcomed) {
      welcomed = true;
      await report("sub ready");
    } else if (m.user !== "System" && m.content) {
      await report("sub " + m.content);
    }
    if (m.content === "send now") {
      const answer = await client.sendMessage({ room, user: "browser", content: "hello from connect-es" });
      await report("sent " + answer.messageId);
      try {
        await client.sendMessage({ room, user: "", content: "no user" });
        await report("failed: an empty user was accepted");
      } catch (e) {
        const err = ConnectError.from(e);
        await report("refused " + err.code + " " + err.rawMessage);
      }
    }
  }
}

async function metrics() {
  for await (const m of client.streamMetrics({ instanceId: "chromium", intervalSeconds: 1 })) {
    await report("metric " + m.name + " " + m.labels.instance);
    return;
  }
}

subscribe().catch((e) => report("failed subscribe: " + e));
metrics().catch((e) => report("failed metrics: " + e));
