-- The quantile sketches of each window's response and first-response times (seconds): bucket
-- b holds values from γ^(b−1) to γ^b with γ = 1.01 / 0.99, counts[i] of them in buckets[i];
-- bucket -2147483648 holds values below 0.01 s. Windows merge by adding the counts of equal
-- buckets — `sumMap(response_sketch_buckets, response_sketch_counts)` — so a percentile over
-- any range and any set of accounts is within 1 % of the exact one; averaging the windows'
-- medians is not. Rows written before this have empty sketches.
ALTER TABLE {db}.conversations ADD COLUMN response_sketch_buckets Array(Int32), ADD COLUMN response_sketch_counts Array(Int64), ADD COLUMN first_response_sketch_buckets Array(Int32), ADD COLUMN first_response_sketch_counts Array(Int64)
