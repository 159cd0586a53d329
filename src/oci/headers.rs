//! The header names of the registry wire protocol that `http` does not define.

/// The digest of the content a response is about.
pub const CONTENT_DIGEST: &str = "docker-content-digest";
/// Sent on `/v2/`: which distribution API this endpoint speaks.
pub const API_VERSION: &str = "docker-distribution-api-version";
/// Marks a request sent by a peer: serve it from local content only, never forward it.
pub const MIRRORED: &str = "x-peermirror-mirrored";
/// On a peer's request accepted by a static token: which token lines this node accepts (as
/// [`crate::auth::TokenId`]s), so the peer sends the newest token both sides hold.
pub const ACCEPTED_TOKENS: &str = "x-peermirror-accepted-tokens";
/// On a peer's "busy" answer (503): how many peers stream this blob from it now
/// (`--max-followers`); the asker tries a less busy copy.
pub const FOLLOWERS: &str = "x-peermirror-followers";
/// Sent by a peer that found every copy busy: let it in beyond the follower cap.
pub const CROWD: &str = "x-peermirror-crowd";
/// Sent by a node that misses a blob, to the blob's rollout coordinator: the asker's node id.
/// On the coordinator's 404: `fetch` (go to the upstream) or `follow <node id>`.
pub const ROLLOUT: &str = "x-peermirror-rollout";
/// Sent with [`ROLLOUT`] by a node whose followed copy failed: that copy's node id. The
/// coordinator drops it from the chain if it does not answer.
pub const ROLLOUT_FAILED: &str = "x-peermirror-rollout-failed";
/// On a manifest served to a peer: `held` when this node holds every blob the manifest names,
/// complete. Only then does the asker remember it as a provider of those blobs; a node still
/// pulling the image (a rollout) is found through the DHT and the rollout coordinator instead.
pub const CHILDREN: &str = "x-peermirror-children";
