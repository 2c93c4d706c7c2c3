// Entry point: /call/<sessionId>?token=<jwt>[&relayOnly=1]

import { installTestHook } from "./testhook.js";
import { App } from "./ui/App.js";

const app = new App(document);
installTestHook(app);
app.start();
