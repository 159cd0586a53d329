# Step 2, once every node has the new token: drop the old line, on every node. Each node
# reloads the file within seconds and, with --hosts-dir, hands containerd the first line.
(umask 077 && head -n 1 "$ETC/tokens" > "$ETC/tokens.new")
mv "$ETC/tokens.new" "$ETC/tokens"
