"""Home page: the loaded dictionaries, and the ways to add, rename and remove them.

    streamlit run app.py

Only layout lives here; loading and geometry are `sae_backend`, what pages share `dashboard`.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import background, frame, session, store, uploads
from dashboard.feedback import hosted, show_error, shown_uri
from sae_backend import SAEError
from sae_backend.catalogue import catalogue
from sae_backend.jobs import Job

frame.page("Dictionaries")
st.title("SAE dictionary geometry")
st.caption(
    "Load sparse-autoencoder dictionaries, then compare their features on the other pages "
    "(sidebar). Names are what the other pages and their URLs use."
)

# --- The table of loaded dictionaries -------------------------------------------------------
# Nothing here waits: dictionaries still loading and within-dictionary comparisons still
# computing (background jobs) show progress bars, and the page reruns as each one arrives.
st.subheader("Loaded dictionaries")
rows, computing = [], []
for name, d in store.dictionaries().items():
    mmcs = float("nan")  # until it is known
    try:
        within = background.outcome(store.comparison_work(d, None, label=f"within {name}"))
        if isinstance(within, Job):
            computing.append(within)
        else:
            mmcs = within.summary().mean
    except SAEError as e:  # e.g. fewer than two alive features
        show_error(e, name)
    rows.append(
        {
            "name": name,
            "source": shown_uri(session.entries()[name].uri),
            "features": d.n_features,
            "alive": d.n_alive,
            "d_model": d.d_model,
            "hook": d.meta.hook or "",
            "format": d.meta.format,
            "within MMCS": mmcs,
        }
    )
if rows:
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={"within MMCS": st.column_config.NumberColumn(format="%.3f")},
    )
elif not session.entries():
    st.info("No dictionaries loaded: add one below.")
if computing:
    st.caption("Within-dictionary max cosine (MMCS), computing:")
    background.progress_bars(computing)

# --- Add ------------------------------------------------------------------------------------
st.subheader("Add a dictionary")
server = hosted()
tabs = ["By URI", "From the paper's catalogue"]
if server is None or server.uploads:
    tabs.append("Upload")
by_uri, from_menu, *upload_tab = st.tabs(tabs)
ORIENTATIONS = ["", "rows", "columns"]  # "": from the file


def orientation_label(o: str) -> str:
    return o or "from the file"


with by_uri:
    with st.form("add_uri"):
        uri = st.text_input(
            "Source",
            placeholder="path/to/checkpoint, wandb:ENTITY/PROJECT/RUN, hf:OWNER/REPO:PATH, "
            "saelens:RELEASE/SAE_ID",
        )
        c1, c2, c3 = st.columns(3)
        name = c1.text_input("Name (short; used in URLs)", placeholder="automatic")
        position = c2.text_input("Position (files with several SAEs)", placeholder="optional")
        orientation = c3.selectbox(
            "Orientation (plain matrices only)", ORIENTATIONS, format_func=orientation_label
        )
        submitted = st.form_submit_button("Load")
    if server is not None:
        shared = ", ".join(f"`{d.name}/`" for d in server.data_dirs) or "none"
        remote = ", ".join(f"`{r}:`" for r in sorted(server.remote)) or "none"
        st.caption(
            f"This is a shared server: local paths load from its data folders ({shared}; "
            f"relative paths start in the first); remote sources allowed: {remote}."
        )
    if submitted:
        if not uri.strip():
            st.error("Enter a source: a local path or a wandb:, hf: or saelens: URI.")
        else:
            try:
                chosen = name.strip() or session.suggest_name(uri.strip())
                opts = {"position": position.strip(), "orientation": orientation}
                session.add(chosen, uri.strip(), opts)  # loads in the background
                st.rerun()
            except SAEError as e:
                show_error(e, sticky=True)

with from_menu:
    cat = catalogue()
    c1, c2, c3 = st.columns(3)
    layer = c1.selectbox("Layer", cat.layers, index=list(cat.layers).index(6))
    sae_type = c2.selectbox("Type", list(cat.sae_types), format_func=cat.sae_types.get)
    criterion = c3.selectbox("Matched by", list(cat.criteria), format_func=cat.criteria.get)
    found = cat.select(criterion=criterion, layer=layer, sae_type=sae_type)
    entry = found[0] if found else None
    uris = {  # the copies of this SAE that this server lets visitors load
        k: u
        for k, u in (entry.uris() if entry else {}).items()
        if server is None or u.split(":")[0] in server.remote
    }
    if entry is None:
        st.info("The catalogue has no SAE for this combination.")
    elif not uris:
        st.info("This server allows none of the catalogue's sources (W&B, Hugging Face, SAELens).")
    else:
        kind = st.radio(
            "Load from", list(uris), horizontal=True, format_func=lambda k: f"{k}: {uris[k]}"
        )
        st.caption(f"W&B run {entry.run_id}. W&B needs an API key (`wandb login`).")
        if st.button("Load from catalogue"):
            try:
                session.add(f"L{layer}-{sae_type}-{criterion}", uris[kind])
                st.rerun()
            except SAEError as e:
                show_error(e, sticky=True)


def upload_section() -> None:
    """The upload box (hidden on servers that take no uploads)."""
    st.caption(
        f"One checkpoint file, or all files of one SAE folder (e.g. cfg.json + "
        f"sae_weights.safetensors). At most {uploads.upload_limit_mb()} MB. Loaded safely: no "
        "code in a file is ever run."
    )
    files = st.file_uploader("Files", accept_multiple_files=True)
    c1, c2 = st.columns(2)
    up_name = c1.text_input("Name", key="upload_name", placeholder="automatic")
    up_orientation = c2.selectbox(
        "Orientation (plain matrices only)",
        ORIENTATIONS,
        format_func=orientation_label,
        key="upload_orientation",
    )
    if files and st.button("Load upload"):
        try:
            path = uploads.save_upload(files)
            name = up_name.strip() or session.suggest_name(files[0].name)
            session.add(name, path, {"orientation": up_orientation}, upload=True)
            st.rerun()
        except SAEError as e:
            show_error(e, sticky=True)


for tab in upload_tab:
    with tab:
        upload_section()

# --- Rename / remove ------------------------------------------------------------------------
if session.entries():
    st.subheader("Rename or remove")
    c1, c2, c3, c4 = st.columns([2, 2, 1, 1], vertical_alignment="bottom")
    target = c1.selectbox("Dictionary", list(session.entries()))
    new_name = c2.text_input("New name", key="new_name")
    if c3.button("Rename"):
        try:
            session.rename(target, new_name)
            st.rerun()
        except SAEError as e:
            show_error(e, sticky=True)
    if c4.button("Remove"):
        session.remove(target)
        st.rerun()
