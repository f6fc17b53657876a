"""The dashboard's UI layer: what the Streamlit pages (app.py, pages/*.py) share.

This package imports streamlit; `sae_backend` never does. Pages lay out widgets and call into
it; every number comes from `sae_backend`. One module per concern:

    frame    page(title): page config, login gate, demo seeding, sidebar page links and list
    background  the one register of background jobs: results or progress bars, never a wait
    auth     the password and OIDC gates; the W&B key from the app's secrets
    feedback which server this is (hosted or local); errors, progress and sources as shown
    session  the session's named dictionaries (Entry), the one name rule, share links
    uploads  uploaded files on disk: size limit, content-named folders, day-old cleanup
    store    the one shared in-memory store: dictionaries and results for every session, and
             the `Work` (key, compute, label) of each result pages ask `background` for
    text     pure text: the demo note, context windows, size limits
    charts   pure plotly figures: similarity histogram, MMCS heatmap, UMAP scatter, families,
             frame and absorption figures
    ladder   pure: the Families page's default ladder and its URL state
    tables   pure: the Families and Geometry pages' tables, copied from backend results
    links    same-tab links between Neighbours, Families and Geometry; the session's ladder
    matching_tables  pure: what a one-to-one matching means (orphans, statuses) as tables
    matching_ui      the matching's τ and criterion (one choice per session) and downloads

Imports go one way, without cycles: text, feedback and background at the bottom, session on
them, store and uploads above, frame on top; only pages import the frame. ladder and tables
import only the backend; links imports session and ladder; matching_tables imports text,
matching_ui session and feedback.
"""
