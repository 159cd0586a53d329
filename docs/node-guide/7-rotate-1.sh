# Rotating the token, with no restart and no refused request. Every line of the token file
# is accepted; a node sends a peer the first (newest) line that peer says it accepts, and a
# peer it has not heard from yet the last (oldest) line. Step 1, on every node: the new
# token first, the old one kept below it (the same new token everywhere).
(umask 077 && { echo "$NEW_TOKEN"; cat "$ETC/tokens"; } > "$ETC/tokens.new")
mv "$ETC/tokens.new" "$ETC/tokens"
