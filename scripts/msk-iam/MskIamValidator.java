// The broker side of Amazon MSK's IAM authentication, for the local stack: validates the
// OAUTHBEARER tokens banter signs for `kafka.sasl.mechanism = "AWS_MSK_IAM"` the way MSK does
// (the token is a SigV4-presigned `GET https://kafka.<region>.amazonaws.com/?Action=
// kafka-cluster%3AConnect`, base64url), against the one access key in its JAAS options:
//
//   listener.name.iam.oauthbearer.sasl.server.callback.handler.class=banter.stack.MskIamValidator
//   listener.name.iam.oauthbearer.sasl.jaas.config=...OAuthBearerLoginModule required \
//     access_key_id="AKIA…" secret_access_key="…" region="us-east-1";
//
// It recomputes the signature from the URL's parameters (all but X-Amz-Signature and
// User-Agent, RFC 3986-encoded and sorted), checks the action, the scope, the region and the
// validity window, and accepts the token as principal <access key id> until it expires.
// Compiled by scripts/stack.sh against the broker's own jars.
package banter.stack;

import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.time.LocalDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.Base64;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;
import javax.security.auth.callback.Callback;
import javax.security.auth.callback.UnsupportedCallbackException;
import javax.security.auth.login.AppConfigurationEntry;
import org.apache.kafka.common.security.auth.AuthenticateCallbackHandler;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerExtensionsValidatorCallback;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerToken;
import org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallback;

public class MskIamValidator implements AuthenticateCallbackHandler {
    private String accessKeyId;
    private String secretAccessKey;
    private String region;

    @Override
    public void configure(Map<String, ?> configs, String mechanism, List<AppConfigurationEntry> jaas) {
        Map<String, ?> options = jaas.get(0).getOptions();
        accessKeyId = (String) options.get("access_key_id");
        secretAccessKey = (String) options.get("secret_access_key");
        region = (String) options.get("region");
        if (accessKeyId == null || secretAccessKey == null || region == null) {
            throw new IllegalArgumentException("MskIamValidator needs access_key_id, secret_access_key and region");
        }
    }

    @Override
    public void close() {}

    @Override
    public void handle(Callback[] callbacks) throws UnsupportedCallbackException {
        for (Callback c : callbacks) {
            if (c instanceof OAuthBearerValidatorCallback) {
                OAuthBearerValidatorCallback v = (OAuthBearerValidatorCallback) c;
                try {
                    v.token(validate(v.tokenValue()));
                } catch (Exception e) {
                    System.err.println("MskIamValidator: refused: " + e.getMessage());
                    v.error("invalid_token", null, null);
                }
            } else if (c instanceof OAuthBearerExtensionsValidatorCallback) {
                // MSK's tokens carry no extensions; none are accepted.
            } else {
                throw new UnsupportedCallbackException(c);
            }
        }
    }

    private OAuthBearerToken validate(String token) throws Exception {
        String url = new String(Base64.getUrlDecoder().decode(token), StandardCharsets.UTF_8);
        String prefix = "https://kafka." + region + ".amazonaws.com/?";
        if (!url.startsWith(prefix)) {
            throw new Exception("not a presigned URL for kafka." + region + ".amazonaws.com");
        }
        String host = "kafka." + region + ".amazonaws.com";
        TreeMap<String, String> params = new TreeMap<>();
        String signature = null;
        for (String pair : url.substring(prefix.length()).split("&")) {
            int eq = pair.indexOf('=');
            if (eq < 0) throw new Exception("malformed parameter " + pair);
            String k = URLDecoder.decode(pair.substring(0, eq), StandardCharsets.UTF_8);
            String v = URLDecoder.decode(pair.substring(eq + 1), StandardCharsets.UTF_8);
            if (k.equals("X-Amz-Signature")) signature = v;
            else if (!k.equals("User-Agent")) params.put(k, v);
        }
        require(signature != null, "no X-Amz-Signature");
        require("kafka-cluster:Connect".equals(params.get("Action")), "Action is not kafka-cluster:Connect");
        require("AWS4-HMAC-SHA256".equals(params.get("X-Amz-Algorithm")), "X-Amz-Algorithm");
        require("host".equals(params.get("X-Amz-SignedHeaders")), "X-Amz-SignedHeaders is not host");
        String date = params.get("X-Amz-Date");
        require(date != null && date.length() == 16, "X-Amz-Date");
        long expires = Long.parseLong(params.getOrDefault("X-Amz-Expires", "0"));
        require(expires > 0 && expires <= 900, "X-Amz-Expires must be 1..900");
        String scope = date.substring(0, 8) + "/" + region + "/kafka-cluster/aws4_request";
        String credential = params.get("X-Amz-Credential");
        require((accessKeyId + "/" + scope).equals(credential), "unknown access key or wrong scope: " + credential);
        long signedAt = LocalDateTime.parse(date, DateTimeFormatter.ofPattern("yyyyMMdd'T'HHmmss'Z'"))
                .toEpochSecond(ZoneOffset.UTC);
        long now = System.currentTimeMillis() / 1000;
        require(now >= signedAt - 300 && now <= signedAt + expires, "token expired or not yet valid");
        StringBuilder query = new StringBuilder();
        for (Map.Entry<String, String> e : params.entrySet()) {
            if (query.length() > 0) query.append('&');
            query.append(encode(e.getKey())).append('=').append(encode(e.getValue()));
        }
        String canonical = "GET\n/\n" + query + "\nhost:" + host + "\n\nhost\n" + hex(sha256(""));
        String toSign = "AWS4-HMAC-SHA256\n" + date + "\n" + scope + "\n" + hex(sha256(canonical));
        byte[] key = hmac(("AWS4" + secretAccessKey).getBytes(StandardCharsets.UTF_8), date.substring(0, 8));
        key = hmac(key, region);
        key = hmac(key, "kafka-cluster");
        key = hmac(key, "aws4_request");
        String expected = hex(hmac(key, toSign));
        require(MessageDigest.isEqual(expected.getBytes(StandardCharsets.UTF_8), signature.getBytes(StandardCharsets.UTF_8)),
                "signature does not match (wrong secret access key?)");
        final long start = signedAt * 1000, end = (signedAt + expires) * 1000;
        final String principal = accessKeyId;
        return new OAuthBearerToken() {
            public String value() { return token; }
            public Set<String> scope() { return Collections.emptySet(); }
            public long lifetimeMs() { return end; }
            public String principalName() { return principal; }
            public Long startTimeMs() { return start; }
        };
    }

    private static void require(boolean ok, String what) throws Exception {
        if (!ok) throw new Exception(what);
    }

    private static String encode(String s) {
        StringBuilder out = new StringBuilder();
        for (byte b : s.getBytes(StandardCharsets.UTF_8)) {
            int c = b & 0xff;
            if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
                    || c == '-' || c == '_' || c == '.' || c == '~') {
                out.append((char) c);
            } else {
                out.append(String.format("%%%02X", c));
            }
        }
        return out.toString();
    }

    private static byte[] sha256(String s) throws Exception {
        return MessageDigest.getInstance("SHA-256").digest(s.getBytes(StandardCharsets.UTF_8));
    }

    private static byte[] hmac(byte[] key, String msg) throws Exception {
        Mac mac = Mac.getInstance("HmacSHA256");
        mac.init(new SecretKeySpec(key, "HmacSHA256"));
        return mac.doFinal(msg.getBytes(StandardCharsets.UTF_8));
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder();
        for (byte b : bytes) out.append(String.format("%02x", b & 0xff));
        return out.toString();
    }
}
