import java.nio.file.Path;
import java.util.List;
import org.opensearch.common.settings.Settings;
import org.opensearch.env.Environment;
import org.opensearch.node.Node;
import org.opensearch.transport.Netty4Plugin;

/**
 * One OpenSearch node for tests, on loopback, from the jars Maven resolved (tools/build opensearch):
 * {@code java -cp CLASSPATH OpenSearchNode HTTP_PORT HOME_DIR}. Single-node discovery, HTTP over netty,
 * no security plugin; it stops on SIGTERM.
 */
public final class OpenSearchNode {
    private static final class TestNode extends Node {
        TestNode(Environment env) {
            super(env, List.of(Netty4Plugin.class), true);
        }
    }

    public static void main(String[] args) throws Exception {
        Path home = Path.of(args[1]);
        Settings settings = Settings.builder()
            .put("path.home", home.toString())
            .put("path.data", home.resolve("data").toString())
            .put("path.logs", home.resolve("logs").toString())
            .put("cluster.name", "talon-opa-test")
            .put("node.name", "node-1")
            .put("network.host", "127.0.0.1")
            .put("http.port", args[0])
            .put("transport.port", "0")
            .put("discovery.type", "single-node")
            .put("http.type", "netty4")
            .put("transport.type", "netty4")
            .put("cluster.routing.allocation.disk.threshold_enabled", false)
            .build();
        Node node = new TestNode(new Environment(settings, home.resolve("config")));
        node.start();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                // exiting anyway
            }
        }));
        Thread.currentThread().join();
    }
}
