// Single-node Elasticsearch for the devstack, started in-process from the published Maven Central jars.
//
// The official distribution's launcher (server-cli, entitlement agent, bundled modules) is not published
// to Maven Central, so this starts org.elasticsearch.node.Node directly: settings from elasticsearch.yml
// under path.home, modules (netty4 HTTP/transport) loaded from path.home/modules like the distribution does.
// It is a development node only: no security, no entitlements, one node.
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.Set;
import java.util.concurrent.CountDownLatch;

import org.elasticsearch.common.logging.LogConfigurator;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.env.Environment;
import org.elasticsearch.node.Node;
import org.elasticsearch.plugins.PluginsLoader;

public final class EventpipeNode {
    public static void main(String[] args) throws Exception {
        Path home = Path.of(args[0]).toAbsolutePath();
        Settings settings = Settings.builder()
            .loadFromPath(home.resolve("config").resolve("elasticsearch.yml"))
            .put("path.home", home.toString())
            .build();
        Environment environment = new Environment(settings, home.resolve("config"));
        LogConfigurator.setNodeName(settings.get("node.name", "eventpipe-dev"));
        LogConfigurator.configure(environment, true);
        PluginsLoader plugins = PluginsLoader.createPluginsLoader(
            PluginsLoader.loadModulesBundles(home.resolve("modules"), false),
            Set.of(),
            Map.of(),
            false
        );
        Node node = new Node(environment, plugins);
        CountDownLatch stopped = new CountDownLatch(1);
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                node.close();
            } catch (Exception e) {
                e.printStackTrace();
            } finally {
                stopped.countDown();
            }
        }, "eventpipe-node-shutdown"));
        node.start();
        Files.writeString(home.resolve("started"), "ok\n");
        stopped.await();
    }
}
