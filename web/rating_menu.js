// Precise Edit: a menu entry (and command) that opens the rating studies list in a new tab.
import { app } from "../../scripts/app.js";

app.registerExtension({
  name: "PreciseEdit.Rating",
  commands: [{
    id: "PreciseEdit.OpenRatingStudies",
    label: "Rating studies (Precise Edit)",
    icon: "pi pi-star",
    function: () => window.open(new URL("precise_edit/rating", location.href.replace(/[^/]*$/, "")).href, "_blank"),
  }],
  menuCommands: [{ path: ["Extensions", "Precise Edit"], commands: ["PreciseEdit.OpenRatingStudies"] }],
});
